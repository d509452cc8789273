"""Work that belongs to no caller: detached tasks, and chores handed over from places
where nothing may block.

The upstream call of a flight must outlive any one caller's cancellation, so it cannot
run in a caller's task or task group. anyio has no public way to start a task without
a task group; both backends have one natively: an asyncio task, or a trio system task.

A stream's finalizer runs wherever the garbage collector happens to run: in any thread,
at any allocation, maybe while that thread holds a flight table's lock. So it only
hands its work over: to its event loop (thread-safe, and safe to call from a finalizer
on both backends), or, for threads, to one janitor thread fed by a ``SimpleQueue``
(whose ``put`` is documented as safe in finalizers).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from ._signal import AsyncSignal, TrioSignal, asyncio_signals

__all__ = [
    "Chore",
    "cancelled_from_outside",
    "current_loop",
    "later_in_janitor",
    "running_loop",
    "spawn_detached",
    "start_janitor",
]

logger = logging.getLogger("httpx_coalesce")

Chore = Callable[[], object]

# asyncio keeps only weak references to tasks; these are the strong ones.
_running: set[asyncio.Task[None]] = set()


def current_loop() -> tuple[object, Callable[[], AsyncSignal], Callable[[Chore], object]]:
    """A weak-referenceable object identifying the running event loop, how to make a
    signal for its tasks, and how to run a chore on it from any thread (or finalizer)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, partial(TrioSignal, trio.Event, trio.move_on_after), token.run_sync_soon
    return loop, asyncio_signals(loop), loop.call_soon_threadsafe


#: The running asyncio loop, or None (no loop, or trio), without raising: the C
#: function itself, as it is called once per request.
running_loop: Callable[[], asyncio.AbstractEventLoop | None] = asyncio._get_running_loop


_chores: queue.SimpleQueue[Chore] = queue.SimpleQueue()
_janitor: threading.Thread | None = None
_janitor_lock = threading.Lock()


def start_janitor() -> None:
    """Make sure the janitor runs. Call from ordinary code, before a chore can be due:
    starting a thread from a finalizer could itself deadlock."""
    global _janitor
    if _janitor is None:
        with _janitor_lock:
            if _janitor is None:
                janitor = threading.Thread(target=_sweep, name="httpx-coalesce-janitor", daemon=True)
                janitor.start()
                _janitor = janitor


def later_in_janitor(chore: Chore) -> None:
    _chores.put(chore)


def _sweep() -> None:
    while True:
        chore = _chores.get()
        try:
            chore()
        except Exception:
            logger.exception("httpx-coalesce: a clean-up chore failed")
        # Not kept while waiting for the next one: the chore (a seat's leave) would keep
        # its flight, and all the flight holds, alive until then.
        del chore


def _forget_janitor() -> None:
    # A forked child has no janitor thread, only the parent's record of one.
    global _janitor
    _janitor = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_janitor)


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

    # A system task runs in the context trio starts it with, not its spawner's (an
    # asyncio task copies its creator's): the upstream call must see the leader's.
    trio.lowlevel.spawn_system_task(run, context=contextvars.copy_context())
    return scope.cancel


def cancelled_from_outside(error: BaseException) -> bool:
    """Whether *error*, caught in the current task, is that task being cancelled, as
    opposed to a ``CancelledError`` or ``Cancelled`` that code below raised on its own.

    Only the first may propagate: it is how the task ends. The second is a failure
    like any other and must reach the flight's callers.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is not None:
        if not isinstance(error, asyncio.CancelledError):
            return False
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return cancelling is None or cancelling() > 0
    import trio

    if not isinstance(error, trio.Cancelled):
        return False
    # Inside a scope that was cancelled, checkpoints report a deadline of -inf.
    return bool(trio.current_effective_deadline() == -math.inf)
