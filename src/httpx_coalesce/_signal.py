"""Waking the callers of a flight: one shape for threads, one for event loops.

Flight state is guarded by a ``threading.Lock`` in both worlds; a signal only says
"look again". The async one creates its event lazily, so a flight whose callers never
wait (the common case for a body already read) never allocates one.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["AsyncSignal", "Signal", "ThreadSignal"]


class Signal:
    __slots__ = ()

    def fire(self) -> None:
        """Wake everyone waiting. Called with the flight's lock held."""
        raise NotImplementedError


class AsyncSignal(Signal):
    """For tasks of one event loop. Check state, then wait with no await in between.

    Uses the loop's own Event class (asyncio's or trio's), given by the flight table:
    an anyio.Event looks its backend up on every creation, once per flight here.
    """

    __slots__ = ("_event", "_event_class")

    def __init__(self, event_class: type[Any]) -> None:
        self._event_class = event_class
        self._event: Any = None

    def fire(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        event = self._event
        if event is None:
            event = self._event = self._event_class()
        await event.wait()


class ThreadSignal(Signal):
    """For threads. ``wait`` must be called with the flight's lock held."""

    __slots__ = ("_condition",)

    def __init__(self, lock: threading.Lock) -> None:
        self._condition = threading.Condition(lock)

    def fire(self) -> None:
        self._condition.notify_all()

    def wait(self, timeout: float | None = None) -> None:
        self._condition.wait(timeout)
