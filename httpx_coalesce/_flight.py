"""The flight: one upstream call, its leader, its waiters, and its end.

A :class:`FlightTable` maps keys to flights. The first caller of a key becomes the
leader and starts the upstream call, which runs apart from every caller (see
``_upstream``); everyone, leader included, then holds a :class:`Seat` and reads the
response from the flight's replay. A flight leaves the table before its callers can
see its end, so a retry of the same key starts a new flight. When the last seat is
left before the end, the upstream call is cancelled.

All state is guarded by the table's lock; waiting is done by the callers through
``wait`` (threads) or ``wait_async`` (event loops), each given a predicate that
returns ``None`` for "not yet".
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ._limits import Limits
from ._replay import Head, Replay
from ._signal import AsyncSignal, Signal, ThreadSignal
from ._stats import Counters
from ._tasks import Chore, later_in_janitor

__all__ = ["END", "Abandoned", "Flight", "FlightTable", "Seat"]

logger = logging.getLogger("httpx_coalesce")

T = TypeVar("T")

# Flight ids: unique in this process and distinct across processes, cheap to make.
_ids = itertools.count(1)
_id_prefix = os.urandom(3).hex()


class State(enum.Enum):
    OPEN = "open"
    DONE = "done"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


#: What a reader gets past the last chunk of a complete body.
END = _End()


class Abandoned(Exception):
    """The upstream call stopped for a reason of its own (not an upstream error).

    Callers that have not seen a response yet make their own request instead; a
    reader part-way through a body gets a read error.
    """


class Seat:
    """One caller's place in a flight: its read position, and whether it led."""

    __slots__ = ("flight", "leader", "left", "position")

    def __init__(self, flight: Flight, leader: bool) -> None:
        self.flight = flight
        self.leader = leader
        self.position = 0
        self.left = False

    def leave(self) -> None:
        self.flight.leave(self)


class Flight:
    __slots__ = (
        "_cancel",
        "error",
        "head",
        "id",
        "joinable",
        "joined",
        "key",
        "lock",
        "pump_waiting",
        "replay",
        "seats",
        "signal",
        "state",
        "table",
        "timeout",
        "upstream_response",
    )

    def __init__(self, table: FlightTable, key: str, signal: Signal) -> None:
        self.id = f"{_id_prefix}-{next(_ids):x}"
        self.table = table
        self.key = key
        self.lock = table.lock
        self.signal = signal
        self.state = State.OPEN
        self.head: Head | None = None
        self.replay = Replay()
        #: What stopped the upstream call: raised as it is for the leader's caller only.
        self.error: BaseException | None = None
        self.joinable = True
        self.seats: set[Seat] = set()
        self.joined = 0
        self.pump_waiting = False
        self._cancel: Callable[[], object] | None = None
        #: The leader's timeouts, which the upstream call runs under.
        self.timeout: object = None
        self.upstream_response: object = None

    def __repr__(self) -> str:
        return f"<Flight {self.id} key={self.key[:12]} {self.state.value} seats={len(self.seats)}>"

    # -- waiting ---------------------------------------------------------------------

    def wait(self, ready: Callable[[], T], within: float | None = None) -> T | None:
        """Block the calling thread until *ready* (called under the lock) has an answer.

        None if *within* seconds pass first.
        """
        signal = self.signal
        assert isinstance(signal, ThreadSignal)
        deadline = None if within is None else time.monotonic() + within
        with self.lock:
            while (result := ready()) is None:
                if deadline is None:
                    signal.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    signal.wait(left)
            return result

    async def wait_async(self, ready: Callable[[], T], within: float | None = None) -> T | None:
        """Wait in the current task until *ready* (called under the lock) has an answer.

        None if *within* seconds pass first.
        """
        with self.lock:
            result = ready()
        if result is not None:
            return result
        signal = self.signal
        assert isinstance(signal, AsyncSignal)
        deadline = None if within is None else time.monotonic() + within
        while True:
            if deadline is None:
                await signal.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                await signal.wait(left)
            with self.lock:
                result = ready()
            if result is not None:
                return result

    # -- what callers ask (call under the lock, through wait / wait_async) -------------

    def outcome(self) -> Head | BaseException | None:
        """The head to answer with, the error to raise, or None while neither is known."""
        if self.head is not None:
            return self.head
        if self.error is not None:
            return self.error
        if self.state is State.ABANDONED:
            return Abandoned()
        return None

    def next_data(self, seat: Seat) -> bytes | _End | BaseException | None:
        """The next chunk for *seat*, END, the error that stopped the body, or None (wait)."""
        replay = self.replay
        position = seat.position
        if position < replay.end:
            chunk, seat.position = replay.read(position)
            if self.pump_waiting:
                self.signal.fire()
            return chunk
        if replay.complete:
            return END
        if self.error is not None:
            return self.error
        if self.state is not State.OPEN:
            return Abandoned("the shared upstream response stopped before its end")
        return None

    # -- what the upstream side says --------------------------------------------------

    def set_canceller(self, cancel: Callable[[], object]) -> bool:
        """Register how to stop the upstream call; False if it is already unwanted."""
        with self.lock:
            if self.state is not State.OPEN:
                return False
            self._cancel = cancel
            return True

    def publish(self, head: Head, response: object = None) -> None:
        """Hand the response out now, while its body still arrives (live fan-out); its
        upstream *response* object is kept for the leader."""
        with self.lock:
            self.head = head
            self.upstream_response = response
            self.signal.fire()

    def append(self, chunk: bytes) -> None:
        with self.lock:
            replay = self.replay
            replay.append(chunk)
            if self.joinable and replay.retained > self.table.limits.max_body_bytes:
                # Too big to keep for late joiners: they make their own request, and
                # what every attached reader has passed can go.
                self.joinable = False
                self.table.discard(self)
                logger.debug("flight %s passed the body limit; no more joiners", self.id)
            if not self.joinable:
                self._release()
            elif replay.batch_boundary and self.seats:
                # The chunks stay for late joiners, but a batch every reader has passed
                # would only be joined again by one: once a batch (not per chunk, as
                # that is a walk over every seat), free those.
                replay.release_batches_before(min(seat.position for seat in self.seats))
            self.signal.fire()

    def pump_may_go_on(self) -> bool | None:
        """For the pump: None (wait) while the slowest reader lags a full limit behind.

        This is the only way a slow reader slows the others: it keeps its place and
        loses nothing, the pump pauses, as one upstream connection's window would.
        """
        # While the flight takes joiners it holds the whole body for them (and so stays
        # under the limit); only past it does it free and wait.
        if self.state is State.OPEN and self.seats and not self.joinable:
            self._release()
            if self.replay.retained > self.table.limits.max_body_bytes:
                self.pump_waiting = True
                return None
        self.pump_waiting = False
        return True

    def finish(self, head: Head, chunks: list[bytes] | None = None, response: object = None) -> None:
        """The body is complete. A buffered response comes whole, in *chunks*, and is
        published only now; its upstream *response* object is kept for the leader."""
        with self.lock:
            if self.state is not State.OPEN:
                return
            self._take(head, chunks, response)
            self.replay.complete = True
            self._end(State.DONE)
        self._ended()
        self.table.finished(self)

    def take_upstream_response(self) -> object:
        """The upstream Response object, once: the leader's caller gets it as its own."""
        with self.lock:
            response, self.upstream_response = self.upstream_response, None
            return response

    def fail(
        self,
        error: BaseException,
        head: Head | None = None,
        chunks: list[bytes] | None = None,
        response: object = None,
    ) -> None:
        """The upstream call failed with *error*: before its *head*, or part-way through
        the body (a buffered one brings its *head* and the *chunks* read before it).

        Callers see the head and read up to the failure, as alone they would have; the
        error surfaces where it would have alone, raised as it is for the leader's caller.
        """
        with self.lock:
            if self.state is not State.OPEN:
                return
            if head is not None:
                self._take(head, chunks, response)
            self.error = error
            self._end(State.DONE)
        self._ended()
        logger.debug("flight %s failed: %s", self.id, type(error).__name__)

    def abandon(self) -> None:
        """The upstream side stopped; if nobody said why, waiters must not wait on."""
        if self.state is not State.OPEN:  # the usual case; a state never returns to OPEN
            return
        with self.lock:
            if self.state is not State.OPEN:
                return
            self._end(State.ABANDONED)
        self._ended()
        logger.debug("flight %s abandoned", self.id)

    # -- callers coming and going -----------------------------------------------------

    def seat(self, leader: bool) -> Seat:
        seat = Seat(self, leader)
        self.seats.add(seat)
        self.joined += 1
        return seat

    def leave(self, seat: Seat) -> None:
        cancel = None
        ended = False
        with self.lock:
            if seat.left:
                return
            seat.left = True
            self.seats.discard(seat)
            if self.seats:
                if self.pump_waiting:
                    self.signal.fire()
            elif self.state is State.OPEN:
                # Nobody is left to read the answer: stop paying for it.
                self._end(State.CANCELLED)
                cancel = self._cancel
                self.table.counters.add("cancelled_flights")
                logger.debug("flight %s cancelled: every caller left", self.id)
                ended = True
        if ended:
            self._ended()
        if cancel is not None:
            cancel()

    # -- internals (lock held) --------------------------------------------------------

    def _end(self, state: State) -> None:
        # Out of the table first: whoever sees the end and retries starts a new flight.
        self.state = state
        self.joinable = False
        self.pump_waiting = False
        self.table.discard(self)
        self.signal.fire()

    def _ended(self) -> None:
        # Outside the lock (a metric's recording has locks of its own), once: only the
        # caller that moved the flight out of OPEN gets here. Nobody joins an ended
        # flight, so its count of callers is final.
        self.table.counters.flight_ended(self.joined)

    def _take(self, head: Head, chunks: list[bytes] | None, response: object) -> None:
        if chunks:
            for chunk in chunks:
                self.replay.append(chunk)
        if self.head is None:
            self.head = head
            self.upstream_response = response

    def _release(self) -> None:
        if self.seats:
            self.replay.release_before(min(seat.position for seat in self.seats))


class FlightTable:
    """The flights of one world: all sync threads, or one event loop."""

    def __init__(
        self,
        limits: Limits,
        counters: Counters,
        make_signal: Callable[[threading.Lock], Signal],
        on_finish: Callable[[Flight], None],
        run_soon: Callable[[Chore], object] = later_in_janitor,
    ) -> None:
        self.lock = threading.Lock()
        self.limits = limits
        self.counters = counters
        self.flights: dict[str, Flight] = {}
        self._make_signal = make_signal
        self._on_finish = on_finish
        #: Runs a chore where this table's callers live (their event loop, or the
        #: janitor thread), from any thread, without blocking.
        self._run_soon = run_soon

    def join(self, key: str) -> Seat | str:
        """A seat in the flight of *key* (a new one, led by this caller, if none), or
        the reason this caller must pass through."""
        with self.lock:
            flight = self.flights.get(key)
            if flight is None:
                if len(self.flights) >= self.limits.max_flights:
                    return "max_flights"
                flight = Flight(self, key, self._make_signal(self.lock))
                self.flights[key] = flight
                logger.debug("flight %s started for key %s", flight.id, key[:12])
                return flight.seat(leader=True)
            if len(flight.seats) >= self.limits.max_waiters:
                return "max_waiters"
            return flight.seat(leader=False)

    def leave_later(self, seat: Seat) -> None:
        """Give *seat* back for a stream nobody closed, from its finalizer.

        The finalizer runs wherever the garbage collector does: maybe in another thread,
        maybe with this very lock held (it is not reentrant). So nothing here takes the
        lock or wakes anyone; the leaving is handed to where that is safe.
        """
        if seat.left:  # closed as it should be: the usual case
            return
        # RuntimeError: its event loop has ended, and nobody is left waiting in it.
        with contextlib.suppress(RuntimeError):
            self._run_soon(seat.leave)

    def discard(self, flight: Flight) -> None:
        """Take *flight* out of the table (lock held), if it is still the one there."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    def finished(self, flight: Flight) -> None:
        self._on_finish(flight)

    def load(self) -> tuple[int, int]:
        with self.lock:
            return len(self.flights), sum(len(flight.seats) for flight in self.flights.values())
