"""Tasks that belong to no caller, and the identity of the running event loop.

The upstream call of a flight must outlive any one caller's cancellation, so it cannot
run in a caller's task or task group. anyio has no public way to start a task without
a task group; both backends have one natively: an asyncio task, or a trio system task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["current_loop", "spawn_detached"]

# asyncio keeps only weak references to tasks; these are the strong ones.
_running: set[asyncio.Task[None]] = set()


def current_loop() -> tuple[object, type[Any]]:
    """A weak-referenceable object identifying the running event loop, and its Event class."""
    try:
        return asyncio.get_running_loop(), asyncio.Event
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token(), trio.Event


def spawn_detached(job: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], object]:
    """Run *job* in the current event loop, apart from the calling task; return how to
    cancel it (which works before it has started, too).

    *job* must not raise: on trio a failing system task ends the whole run. Native
    cancellation, not an anyio scope: this runs once per upstream call, and creating
    anyio primitives costs a backend look-up each time.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _spawn_trio(job)
    task = loop.create_task(job())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task.cancel


def _spawn_trio(job: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], object]:
    import trio

    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await job()

    trio.lowlevel.spawn_system_task(run)
    return scope.cancel
