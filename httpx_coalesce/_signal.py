"""Waking the callers of a flight: one shape for threads, one per event loop.

Flight state is guarded by a ``threading.Lock`` in every world; a signal only says
"look again". Each event loop gets its own native kind, not an anyio one: a flight's
followers wait with a deadline (their own timeouts), once for the head and once per
chunk, and an anyio cancel scope per wait cost more than the rest of a follower's
path. On asyncio a deadline is one ``call_later`` timer; on trio, trio's own scope.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
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

    async def wait(self, within: float | None = None) -> None:
        """Return once fired, or after *within* seconds, whichever comes first."""
        raise NotImplementedError


class AsyncioSignal(AsyncSignal):
    __slots__ = ("_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Created on first wait: a flight whose callers never wait allocates nothing.
        self._waiters: list[asyncio.Future[None]] | None = None

    def fire(self) -> None:
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():  # a cancelled waiter is done
                    waiter.set_result(None)

    async def wait(self, within: float | None = None) -> None:
        waiter = self._loop.create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        if within is None:
            await waiter
            return
        timer = self._loop.call_later(within, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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

    async def wait(self, within: float | None = None) -> None:
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
