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
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._limits import Limits
from ._replay import Head, Replay
from ._signal import AsyncioSignal, AsyncSignal, Signal, ThreadSignal
from ._spool import Spool, SpoolFull
from ._stats import Counters
from ._tasks import Chore, later_in_janitor

__all__ = ["END", "PULL", "Abandoned", "Flight", "FlightTable", "Seat"]

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


class _Pull:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PULL"


#: What the lone leading reader gets at the live edge: pull the next chunk yourself
#: (see ``Flight.next_data``).
PULL = _Pull()


class Abandoned(Exception):
    """The upstream call stopped for a reason of its own (not an upstream error).

    Callers that have not seen a response yet make their own request instead; a
    reader part-way through a body gets a read error.
    """


#: The position of a reader the flight had to let go (see ``Flight._detach_slowest``):
#: past every chunk, so it never holds one back.
DETACHED = sys.maxsize


class Seat:
    """One caller's place in a flight: its read position, and whether it led."""

    __slots__ = ("attempt", "flight", "leader", "left", "position", "whole")

    def __init__(self, flight: Flight, leader: bool) -> None:
        self.flight = flight
        self.leader = leader
        #: Which of its caller's attempts this is: a caller whose flight ends with no
        #: answer for it joins once more (see ``_transport``).
        self.attempt = 1
        self.position = 0
        self.left = False
        #: Waits for the whole body, then takes it as one shared object (see
        #: ``Flight.start_reading``).
        self.whole = False

    def leave(self) -> None:
        self.flight.leave(self)


class Flight:
    __slots__ = (
        "_cancel",
        "answered_elsewhere",
        "body",
        "demand",
        "error",
        "follower_kit",
        "head",
        "id",
        "joinable",
        "joined",
        "key",
        "lock",
        "oversized",
        "pump_pulls",
        "pump_signal",
        "reader_pulls",
        "replay",
        "seats",
        "shares_whole",
        "signal",
        "state",
        "table",
        "timeout",
        "upstream_response",
        "url",
        "whole_signal",
        "whole_waiters",
    )

    def __init__(self, table: FlightTable, key: str, signal: Signal) -> None:
        self.id = f"{_id_prefix}-{next(_ids):x}"
        self.table = table
        self.key = key
        self.lock = table.lock
        self.signal = signal
        self.state = State.OPEN
        self.head: Head | None = None
        self.replay = Replay(table.limits.max_body_bytes)
        #: What stopped the upstream call: raised as it is for the leader's caller only.
        self.error: BaseException | None = None
        self.joinable = True
        #: Past max_body_bytes: memory holds only what readers still need, and spills.
        self.oversized = False
        self.seats: set[Seat] = set()
        self.joined = 0
        #: A reader waits at the live edge for a chunk not pulled yet: the pump pulls
        #: one. The upstream goes at the pace of the fastest reader, never ahead of it.
        self.demand = False
        #: Wakes the pump of a live body (made when one is published).
        self.pump_signal: Signal | None = None
        #: The upstream body's iterator, once published live: pulled by the pump, or by
        #: the lone leading reader itself.
        self.body: object = None
        #: The pump pulls a chunk right now (from its ``pull_wanted`` to its next).
        self.pump_pulls = False
        #: The lone leading reader pulls a chunk itself right now (see ``next_data``).
        self.reader_pulls = False
        #: A live body of known length within the memory bound: a reader that reads it
        #: whole (httpx's ``read()``) waits for the whole, and shares it.
        self.shares_whole = False
        #: Readers waiting for the whole body: they want every chunk, as fast as it comes.
        self.whole_waiters = 0
        #: Wakes the readers waiting for the whole body: only at the end, not per chunk
        #: (a thousand of them woken per chunk would cost more than the chunks).
        self.whole_signal: Signal | None = None
        self._cancel: Callable[[], object] | None = None
        #: The leader's timeouts, which the upstream call runs under.
        self.timeout: object = None
        #: The leader's request URL: which API answered, for the price of its answer.
        self.url: object = None
        self.upstream_response: object = None
        #: The backend answered from another process (its leader, or the fleet window):
        #: the leader's caller saved a call too, like its followers.
        self.answered_elsewhere = False
        #: What its followers' responses are made of (see ``_response._FollowerKit``).
        self.follower_kit: Any = None

    def __repr__(self) -> str:
        return f"<Flight {self.id} key={self.key[:12]} {self.state.value} seats={len(self.seats)}>"

    # -- waiting ---------------------------------------------------------------------

    def wait(
        self, ready: Callable[[], T], within: float | None = None, signal: Signal | None = None
    ) -> T | None:
        """Block the calling thread until *ready* (called under the lock) has an answer.

        None if *within* seconds pass first. *signal*: the readers' unless given.
        """
        if signal is None:
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

    async def wait_async(
        self, ready: Callable[[], T], within: float | None = None, signal: Signal | None = None
    ) -> T | None:
        """Wait in the current task until *ready* (called under the lock) has an answer.

        None if *within* seconds pass first. *signal*: the readers' unless given.
        """
        with self.lock:
            result = ready()
        if result is not None:
            return result
        if signal is None:
            signal = self.signal
        assert isinstance(signal, AsyncSignal)
        if within is None:
            while True:
                await signal.wait()
                with self.lock:
                    result = ready()
                if result is not None:
                    return result
        if within <= 0:
            return None
        # The first wait is for all of *within*: one clock read, not two.
        deadline = time.monotonic() + within
        left = within
        while True:
            await signal.wait(left)
            with self.lock:
                result = ready()
            if result is not None:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                return None

    def outcome_async(self, within: float | None = None) -> Awaitable[Head | BaseException | None]:
        """What to await for ``outcome``: as ``wait_async(self.outcome, within)``, but on
        asyncio with no coroutine of ours alive while the caller waits (see
        ``AsyncioSignal.wait_answer``): a flight's followers wait here, all at once."""
        signal = self.signal
        if not isinstance(signal, AsyncioSignal) or (within is not None and within <= 0):
            return self.wait_async(self.outcome, within)
        with self.lock:
            result = self.outcome()
            if result is None:
                return signal.wait_answer(self.outcome, within)
        return signal.answered(result)

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

    def next_data(self, seat: Seat) -> bytes | _End | _Pull | BaseException | None:
        """The next chunk for *seat*, END, the error that stopped the body, None (wait),
        or PULL (pull the next chunk yourself, then ask again)."""
        replay = self.replay
        if seat.whole and not self._whole_ready(seat):
            return None
        position = seat.position
        if position < replay.end:
            chunk, seat.position = replay.read(position)
            return chunk
        if replay.complete:
            return END
        if self.error is not None:
            return self.error
        if position == DETACHED:
            return Abandoned(
                "this reader fell further behind the shared response than Limits.max_spool_bytes allows"
            )
        if self.state is not State.OPEN:
            return Abandoned("the shared upstream response stopped before its end")
        if self.demand:
            return None
        alone = seat.leader and len(self.seats) == 1
        pulled = self.pump_pulls or self.reader_pulls
        if alone and not pulled and self.body is not None and self._may_pull_alone():
            # The leader reads alone: it pulls the chunk in its own task or thread, as it
            # would alone, without waking the pump and being woken back (two task or
            # thread switches a chunk). A joiner meanwhile waits for that chunk as it
            # would for the pump's.
            self.reader_pulls = True
            return PULL
        # At the live edge: the pump pulls the next chunk for this reader, now.
        self.demand = True
        if self.pump_signal is not None:
            self.pump_signal.fire()
        return None

    def _may_pull_alone(self) -> bool:
        """Whether the lone leading reader may pull a chunk itself (see ``next_data``).

        A thread is never cancelled mid-read: always (only a KeyboardInterrupt in the
        leader's own thread could break the body, as it breaks the leader's send for
        its followers already, see ``fail``). A task may be cancelled mid-read, which
        breaks the body for good: only once nobody can join any more (past the memory
        bound), so that no joiner ever finds its body broken by another's cancellation.
        """
        return not self.joinable or isinstance(self.signal, ThreadSignal)

    def signal_for(self, seat: Seat) -> Signal:
        """What wakes *seat*'s reader (lock held): the end, for one waiting for the whole
        body; every chunk, for everyone else."""
        whole_signal = self.whole_signal
        return whole_signal if seat.whole and whole_signal is not None else self.signal

    def start_reading(self, seat: Seat, reads_whole: bool) -> None:
        """*seat*'s stream begins to read (once, lock held).

        A caller that *reads_whole* (httpx's ``read()``: it sees no byte before the last)
        of a body of known length within the memory bound waits for the whole and takes
        it as one object, shared by every such reader, so a thousand callers holding
        ``.content`` hold one copy. Its wanting every chunk keeps the pump going at the
        upstream's own pace, so it finishes when it would alone. Every other reader (one
        iterating the body, or reading an event stream or a body of unknown length)
        reads live from wherever the flight is: what came so far, then each chunk as it
        comes, as alone it would see them.
        """
        if not (reads_whole and self.shares_whole) or seat.whole:
            return
        if seat.position != 0 or self.replay.complete:
            return
        seat.whole = True
        self.whole_waiters += 1
        if self.whole_signal is None:
            self.whole_signal = self.table.make_signal(self.lock)
        if self.pump_signal is not None:
            self.pump_signal.fire()

    def _whole_ready(self, seat: Seat) -> bool:
        """Whether a reader waiting for the whole body may read now (lock held)."""
        replay = self.replay
        ended = replay.complete or self.error is not None or self.state is not State.OPEN
        if not ended and replay.whole:
            return False
        # Complete: the shared body. Failed or stopped: what came, then the error, as
        # alone. Not whole (it outgrew its length): chunk by chunk like everyone.
        seat.whole = False
        self.whole_waiters -= 1
        return True

    def pull_wanted(self) -> bool | None:
        """For the pump: True to pull the next chunk, False to stop, None to wait."""
        self.pump_pulls = False  # asked again: its last pull is over
        if self.state is not State.OPEN:
            return False
        if self.reader_pulls:
            return None  # the lone reader pulls the chunk itself
        if self.demand or self.whole_waiters:
            self.pump_pulls = True
            return True
        return None

    # -- what the upstream side says --------------------------------------------------

    def set_canceller(self, cancel: Callable[[], object]) -> bool:
        """Register how to stop the upstream call; False if it is already unwanted."""
        with self.lock:
            if self.state is not State.OPEN:
                return False
            self._cancel = cancel
            return True

    def publish(
        self, head: Head, response: object = None, shares_whole: bool = False, body: object = None
    ) -> Signal:
        """Hand the response out now, while its *body* (the upstream body's iterator)
        still arrives (live fan-out); its upstream *response* object is kept for the
        leader. Returns the signal that wakes the pump when a reader wants a chunk."""
        pump_signal = self.table.make_signal(self.lock)
        with self.lock:
            self.pump_signal = pump_signal
            self.body = body
            self.shares_whole = shares_whole
            self.head = head
            self.upstream_response = response
            self.signal.fire()
        return pump_signal

    def append(self, chunk: bytes, reader: Seat | None = None) -> None:
        """A chunk of the live body came; *reader*, the lone reader that pulled it
        itself, has it already (its position moves past it)."""
        with self.lock:
            replay = self.replay
            replay.append(chunk)
            if reader is not None:
                reader.position = replay.end
            self.demand = self.reader_pulls = False
            limit = self.table.limits.max_body_bytes
            if self.joinable and replay.held > limit:
                # Too big to keep for late joiners: they make their own request, and
                # what every attached reader has passed can go.
                self.joinable = False
                self.oversized = True
                self.table.discard(self)
                logger.debug("flight %s passed the body limit; no more joiners", self.id)
            if self.oversized:
                self._release()
                self._spill(limit)
            self.signal.fire()

    def _spill(self, limit: int) -> None:
        """Keep memory within *limit*: what lagging readers still need goes to disk."""
        replay = self.replay
        while True:
            try:
                replay.spill(limit, self._make_spool)
                return
            except SpoolFull:
                self._detach_slowest()

    def _make_spool(self) -> Spool:
        limits = self.table.limits
        logger.debug("flight %s spools what its lagging readers still need", self.id)
        # Segments of an eighth of the memory bound: disk is given back in steps that
        # small as the slowest reader moves on.
        return Spool(limits.max_spool_bytes, limits.max_body_bytes // 8)

    def _detach_slowest(self) -> None:
        """The spool is full: let go of the readers that need what it cannot take.

        Rather than pause the upstream, which would hold every other caller for as
        long as the slowest one dawdles (forever, if it never reads again). A reader
        that falls this far behind alone would have its connection's window shut, and
        its server, sooner or later, drop it; here it gets a ``ReadError`` at its next
        read, and everyone else goes on.
        """
        first = self.replay.first
        detached = 0
        for seat in self.seats:
            if seat.position <= first:
                if seat.whole:
                    seat.whole = False
                    self.whole_waiters -= 1
                seat.position = DETACHED
                detached += 1
        if self.whole_signal is not None:
            self.whole_signal.fire()
        logger.warning(
            "flight %s: %d reader(s) fell more than Limits.max_spool_bytes behind and were let go",
            self.id,
            detached,
        )
        if detached == 0:
            # Nobody needs the oldest chunk: nothing to keep (cannot happen while the
            # spool is released before the slowest reader, but never loop on it).
            self.replay.release_before(first + 1)
        else:
            self._release()

    def finish(self, head: Head, chunks: list[bytes] | None = None, response: object = None) -> None:
        """The body is complete. A buffered response comes whole, in *chunks*, and is
        published only now; its upstream *response* object is kept for the leader."""
        with self.lock:
            if self.state is not State.OPEN:
                return
            self._take(head, chunks, response)
            self.replay.complete = True
            self._end(State.DONE)
        if self.joined > 1:  # a flight of one is not recorded (see Counters.flight_ended)
            self._ended()
        self.table.on_finish(self)

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

    def take_body(self, seat: Seat) -> bytes | None:
        """The body, if it is complete and whole, and *seat* leaves the flight with it
        (it needs no seat to read it); else None, and *seat* stays."""
        with self.lock:
            body = self.replay.whole_body()
            if body is None:
                return None
            if len(self.seats) > 1 and not (seat.left or seat.whole or self.oversized):
                # Others stay seated, nothing is spooled for this reader: leaving is only
                # giving the seat back, under the lock already held (the usual case for
                # the followers of a buffered response).
                seat.left = True
                self.seats.discard(seat)
                return body
        self.leave(seat)
        return body

    def leave(self, seat: Seat) -> None:
        cancel = None
        ended = False
        with self.lock:
            if seat.left:
                return
            seat.left = True
            self.seats.discard(seat)
            if seat.whole:
                seat.whole = False
                self.whole_waiters -= 1
            if self.seats:
                if self.oversized and seat.position <= self.replay.first:
                    # It may have been the slowest: what nobody needs now can go. (Only
                    # then: a walk over every seat per leaving caller would be quadratic.)
                    self._release()
            else:
                # The last reader is gone: the spool's files go with it.
                self.replay.close()
                if self.state is State.OPEN:
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
        self.table.discard(self)
        self.signal.fire()
        for signal in (self.pump_signal, self.whole_signal):
            if signal is not None:
                signal.fire()

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
        seats = self.seats
        if len(seats) == 1:
            # A lone reader, the usual case past the bound: no walk over the seats.
            for seat in seats:
                self.replay.release_before(seat.position)
        elif seats:
            self.replay.release_before(min(seat.position for seat in seats))


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
        self.make_signal = make_signal
        #: Called once a flight's body is complete, outside its lock.
        self.on_finish = on_finish
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
                flight = Flight(self, key, self.make_signal(self.lock))
                self.flights[key] = flight
                logger.debug("flight %s started for key %s", flight.id, key[:12])
                leader = True
            elif len(flight.seats) >= self.limits.max_waiters:
                return "max_waiters"
            else:
                leader = False
            seat = Seat(flight, leader)
            flight.seats.add(seat)
            flight.joined += 1
            return seat

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

    def load(self) -> tuple[int, int]:
        with self.lock:
            return len(self.flights), sum(len(flight.seats) for flight in self.flights.values())
