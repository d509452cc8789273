"""Timeouts that count only the time an event loop was free to hear Redis answer.

A burst keeps an event loop busy: one turn of it can take longer than the 0.25 s socket
timeout (seconds, on a loaded machine), and a timer that fires at the end of such a turn
would cancel a command whose answer already sits in the socket, unread. That is this
process being busy, not Redis being slow, and falling back upstream then would only make
the burst worse. So:

* a deadline that comes due while the loop is busy (a ``LoopWatch`` timer ran late
  within the last timeout) is put off by another timeout, at most ``LATE_TURNS`` times:
  a cold connection needs a few round trips, each read in a turn of its own, and a
  caller whose loop is that busy waits for its loop anyway, Redis or not;
* a deadline that comes due on time while Redis answered this loop something within the
  timeout is put off too, up to ``cap`` seconds in all: Redis is working through what
  was sent before, not failing;
* only a deadline met on time, with nothing heard from Redis for a whole timeout, is
  Redis's fault: a Redis that is down, paused or cut off fails as fast as before.

redis-py's asyncio clients time out with the same loop timers, so the clients this
backend makes itself get ``BACKSTOP`` as their own timeouts, behind this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis.exceptions

__all__ = ["BACKSTOP", "LATE_TURNS", "LoopWatch", "Silent", "cap_for", "patiently"]

#: Seconds: the socket timeouts of the asyncio clients a backend makes itself. Only a
#: command that escaped the patient timeout below would ever meet it.
BACKSTOP = 30.0

#: Times a deadline that came due late is put off: connecting (TCP, HELLO, the client's
#: name) and the command itself, with room to spare.
LATE_TURNS = 6

#: Seconds between the watch's looks at its loop while a command waits.
TICK = 0.025

T = TypeVar("T")


class Silent(redis.exceptions.TimeoutError):
    """Redis said nothing for a whole timeout while the event loop was free to hear it:
    Redis's fault, not this process's (a subclass, so telemetry still names a timeout)."""


class LoopWatch:
    """What the patient timeouts of one event loop know: when Redis last answered it,
    and when the loop last ran a timer late. It looks only while a command waits."""

    def __init__(self, timeout: float = 0.25) -> None:
        #: How late a timer may run before the loop counts as busy: a loop late by less
        #: than a quarter of the timeout still had three quarters of it free to hear
        #: Redis (an idle loop runs a timer within a millisecond or two).
        self.busy_lag = timeout / 4
        #: Loop time Redis last answered a command of this loop.
        self.heard = -float("inf")
        #: Loop time a look at the loop last came late.
        self.busy_at = -float("inf")
        self._waiting = 0
        self._ticking = False

    def busy(self, now: float, within: float) -> bool:
        return now - self.busy_at < within

    def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting += 1
        if not self._ticking:
            self._ticking = True
            at = loop.time() + TICK
            loop.call_at(at, self._tick, loop, at)

    def _done(self) -> None:
        self._waiting -= 1

    def _tick(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        now = loop.time()
        if now - at > self.busy_lag:
            self.busy_at = now
        if self._waiting > 0:
            loop.call_at(now + TICK, self._tick, loop, now + TICK)
        else:
            self._ticking = False


def cap_for(timeout: float) -> float:
    """The longest a command waits while Redis answers others: four timeouts, 1 to 5 s."""
    return max(1.0, min(4 * timeout, 5.0))


async def patiently(
    work: Coroutine[Any, Any, T], timeout: float, cap: float, watch: LoopWatch, queued: bool = True
) -> T:
    """Run *work* under the rules above; redis-py's TimeoutError when they say Redis failed.
    Cancelling the caller cancels *work*.

    *queued*: the work waits behind other commands of this loop (pipelines), so Redis
    answering those puts its deadline off; not so for a blocking read on a connection
    of its own, whose answer comes when its block ends.
    """
    loop = asyncio.get_running_loop()
    watch._wait(loop)
    try:
        return await _patiently(loop, work, timeout, cap if queued else timeout, watch)
    finally:
        watch._done()


async def _patiently(
    loop: asyncio.AbstractEventLoop,
    work: Coroutine[Any, Any, T],
    timeout: float,
    cap: float,
    watch: LoopWatch,
) -> T:
    task: asyncio.Future[T] = loop.create_task(work)
    start = loop.time()
    expired: asyncio.Future[tuple[str, bool]] = loop.create_future()
    timers: list[asyncio.TimerHandle] = []
    late_turns = 0

    def due(at: float) -> None:
        nonlocal late_turns
        now = loop.time()
        if watch.busy(now, timeout) or now - at > watch.busy_lag:
            late_turns += 1
            if late_turns <= LATE_TURNS:
                # What arrived meanwhile is read in the loop's next turn.
                timers.append(loop.call_at(now + timeout, due, now + timeout))
                return
            why, silent = f"{LATE_TURNS} turns of a busy event loop", False
        elif now - watch.heard < timeout and now - start < cap and cap > timeout:
            timers.append(loop.call_at(now + timeout, due, now + timeout))
            return
        else:
            silent = now - start < cap
            why = f"{timeout} s of a free event loop" if silent else f"{cap} s"
        if not expired.done():
            expired.set_result((why, silent))

    timers.append(loop.call_at(start + timeout, due, start + timeout))
    waited: set[asyncio.Future[Any]] = {task, expired}
    try:
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        timers[-1].cancel()
        task.cancel()
        # redis-py drops the connection of a cancelled command; let it, so nothing of
        # the command runs on after its caller left.
        await asyncio.wait({task})
        raise
    timers[-1].cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled():
        # redis-py's own class: telemetry names a timeout the same, whoever noticed it.
        why, silent = expired.result()
        raise (Silent if silent else redis.exceptions.TimeoutError)(f"no answer from Redis within {why}")
    # It finished (or failed) while being cancelled: that answer is as good as any.
    return task.result()
