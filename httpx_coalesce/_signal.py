"""Waking the callers of a flight: one shape for threads, one per event loop.

Flight state is guarded by a ``threading.Lock`` in every world; a signal only says
"look again". Each event loop gets its own native kind, not an anyio one: a flight's
followers wait with a deadline (their own timeouts), once for the head and once per
chunk, and an anyio cancel scope per wait cost more than the rest of a follower's
path. On asyncio a deadline is one ``call_later`` timer; on trio, trio's own scope.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

__all__ = ["AsyncSignal", "AsyncioSignal", "Signal", "ThreadSignal", "TrioSignal"]


class Signal:
    __slots__ = ()

    def fire(self) -> None:
        """Wake everyone waiting. Called with the flight's lock held."""
        raise NotImplementedError


class AsyncSignal(Signal):
    """For tasks of one event loop. Check state, then wait with no await in between."""

    __slots__ = ()

    def wait(self, within: float | None = None) -> Awaitable[None]:
        """What to await: done once fired, or after *within* seconds, whichever comes first."""
        raise NotImplementedError


class AsyncioSignal(AsyncSignal):
    """Waiters of one event loop, and their deadlines with one timer for all of them.

    A flight's followers wait with deadlines of their own (once for the head, once per
    chunk): a timer each (a ``TimerHandle``, a push on the loop's heap ordered by a
    Python ``__lt__``, a cancellation the loop cleans up later) cost a follower more than
    the rest of its wait. Here the deadlines are a heap of plain tuples, and only the
    earliest has a timer; a firing wakes everyone and drops them all.
    """

    __slots__ = (
        "_answers",
        "_clock",
        "_deadlines",
        "_loop",
        "_new_future",
        "_question",
        "_timer",
        "_timer_when",
        "_waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        new_future: Callable[[], asyncio.Future[None]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._loop = loop
        #: The loop's ``create_future`` and ``time`` (see ``asyncio_signals``).
        self._new_future = loop.create_future if new_future is None else new_future
        self._clock = loop.time if clock is None else clock
        # Created on first wait: a flight whose callers never wait allocates nothing.
        self._waiters: list[asyncio.Future[None]] | None = None
        #: (deadline, tie-breaker, waiter), earliest first; waiters already woken stay
        #: until a firing or their deadline drops them.
        self._deadlines: list[tuple[float, int, asyncio.Future[Any]]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        #: Waiters for an answer to ``_question`` (see ``wait_answer``).
        self._answers: list[asyncio.Future[Any]] | None = None
        self._question: Callable[[], Any] | None = None

    def fire(self) -> None:
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():  # a cancelled waiter is done
                    waiter.set_result(None)
        answers = self._answers
        if answers is not None:
            assert self._question is not None
            answer = self._question()  # the flight's lock is held: fire's contract
            if answer is None:
                return  # asked too soon: they wait on, and so do their deadlines
            # Let go of the question too: a flight's bound method, kept, would make a
            # cycle (flight, signal, method) that only the cyclic collector frees.
            self._answers = self._question = None
            for waiter in answers:
                if not waiter.done():
                    waiter.set_result(answer)
        if self._deadlines is not None:
            self._deadlines = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def wait(self, within: float | None = None) -> Awaitable[None]:
        # The future itself, not a coroutine awaiting it: every waiting caller would
        # hold one more frame (allocated, and walked by every garbage collection).
        waiter = self._new_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        if within is not None:
            self._keep_deadline(waiter, within)
        return waiter

    def wait_answer(self, question: Callable[[], Any], within: float | None = None) -> asyncio.Future[Any]:
        """What to await for *question*'s first answer that is not None, asked at each
        firing (with the flight's lock held, as *question* needs); None after *within*
        seconds. Call it with the lock held, once *question* has said None.

        Unlike ``wait``, which says "look again" and leaves the looking to a coroutine
        frame per waiter (alive, and walked by every garbage collection, as long as it
        waits), the answer comes in the future itself: a caller waiting for its flight's
        head holds no frame of ours. Every waiter of one signal asks the same question.
        """
        waiter = self._new_future()
        self._question = question
        if self._answers is None:
            self._answers = [waiter]
        else:
            self._answers.append(waiter)
        if within is not None:
            self._keep_deadline(waiter, within)
        return waiter

    def answered(self, answer: Any) -> asyncio.Future[Any]:
        """What to await for an *answer* already known."""
        waiter = self._new_future()
        waiter.set_result(answer)
        return waiter

    def _keep_deadline(self, waiter: asyncio.Future[Any], within: float) -> None:
        when = self._clock() + within
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = []
        heapq.heappush(deadlines, (when, id(waiter), waiter))
        if self._timer is None or when < self._timer_when:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_when = when

    def _expire(self) -> None:
        """The earliest deadline has come: wake whoever's has, and wait for the next."""
        self._timer = None
        deadlines = self._deadlines
        if not deadlines:
            return
        now = self._clock()
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if not waiter.done():
                waiter.set_result(None)
        while deadlines and deadlines[0][2].done():
            heapq.heappop(deadlines)  # woken or cancelled already: no timer for it
        if deadlines:
            self._arm(deadlines[0][0])


def asyncio_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], AsyncioSignal]:
    """How to make signals for *loop*'s tasks.

    A loop that keeps asyncio's own ``create_future`` and ``time`` has them called
    without their Python frames (a future made in C, the monotonic clock itself): one
    of each per waiting caller. A loop of another kind (uvloop's clock is its own) is
    asked through its methods.
    """
    cls = type(loop)
    base = asyncio.BaseEventLoop
    new_future = partial(asyncio.Future, loop=loop) if cls.create_future is base.create_future else None
    clock = time.monotonic if cls.time is base.time else None
    return partial(AsyncioSignal, loop, new_future, clock)


class TrioSignal(AsyncSignal):
    __slots__ = ("_event", "_event_class", "_move_on_after")

    def __init__(self, event_class: type[Any], move_on_after: Callable[[float], Any]) -> None:
        self._event_class = event_class
        self._move_on_after = move_on_after
        self._event: Any = None

    def fire(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def wait(self, within: float | None = None) -> Awaitable[None]:
        return self._wait(within)

    async def _wait(self, within: float | None) -> None:
        event = self._event
        if event is None:
            event = self._event = self._event_class()
        if within is None:
            await event.wait()
            return
        with self._move_on_after(within):
            await event.wait()


class ThreadSignal(Signal):
    """For threads. ``wait`` must be called with the flight's lock held."""

    __slots__ = ("_condition", "_waiting")

    def __init__(self, lock: threading.Lock) -> None:
        self._condition = threading.Condition(lock)
        # Counted here (under the lock): Condition.notify_all is Python code that checks
        # its lock's ownership even with nobody to wake, and a flight fires per chunk.
        self._waiting = 0

    def fire(self) -> None:
        if self._waiting:
            self._condition.notify_all()

    def wait(self, timeout: float | None = None) -> None:
        self._waiting += 1
        try:
            self._condition.wait(timeout)
        finally:
            self._waiting -= 1
