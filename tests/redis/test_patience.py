"""The patient timeouts of the asyncio commands (httpx_coalesce/redis/_patience.py).

A busy event loop is not a slow Redis: an answer that arrived while the loop was busy
past the deadline is taken, and Redis answering other commands puts a deadline off; a
Redis that answers nothing while the loop is free still times out. The loop is made
busy for real (a callback that blocks it); answers come from callbacks, in order.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeout

from httpx_coalesce.redis._patience import LATE_TURNS, LoopWatch, patiently

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TIMEOUT = 0.2


async def _answer(future: asyncio.Future[str]) -> str:
    return await future


def _block(seconds: float) -> None:
    # The loop's thread does something else: no timer and no I/O is seen meanwhile.
    time.sleep(seconds)


async def test_an_answer_that_arrives_while_the_loop_is_busy_past_the_deadline_is_taken() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    # In this order, in the next turn: the answer arrives, then the loop is busy for
    # four timeouts; the deadline comes due late, with the answer unread.
    loop.call_soon(answer.set_result, "ok")
    loop.call_soon(_block, 4 * TIMEOUT)
    assert await patiently(_answer(answer), TIMEOUT, 4 * TIMEOUT, LoopWatch(TIMEOUT)) == "ok"


async def test_no_answer_while_the_loop_is_free_is_a_timeout() -> None:
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(RedisTimeout, match="free event loop"):
        await patiently(_answer(never), TIMEOUT, 4 * TIMEOUT, LoopWatch(TIMEOUT))


async def test_a_loop_that_stays_busy_ends_the_wait_after_its_late_turns() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    busy = True

    def keep_busy() -> None:
        _block(2 * TIMEOUT)
        if busy:
            loop.call_soon(keep_busy)

    loop.call_soon(keep_busy)
    try:
        with pytest.raises(RedisTimeout, match=f"{LATE_TURNS} turns of a busy event loop"):
            await patiently(_answer(never), TIMEOUT, 4 * TIMEOUT, LoopWatch(TIMEOUT))
    finally:
        busy = False


def _hear_others(watch: LoopWatch, times: int, then: asyncio.Future[str] | None) -> None:
    """Redis answers another command of this loop twice per timeout, *times* times;
    then answers *then*, if given."""
    loop = asyncio.get_running_loop()
    watch.heard = loop.time()
    if times > 0:
        loop.call_later(TIMEOUT / 2, _hear_others, watch, times - 1, then)
    elif then is not None:
        then.set_result("ok")


async def test_redis_answering_other_commands_puts_the_deadline_off() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch(TIMEOUT)
    answer: asyncio.Future[str] = loop.create_future()
    loop.call_soon(_hear_others, watch, 8, answer)
    assert await patiently(_answer(answer), TIMEOUT, 100 * TIMEOUT, watch) == "ok"


async def test_redis_answering_only_other_commands_times_out_at_the_cap() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch(TIMEOUT)
    never: asyncio.Future[str] = loop.create_future()
    loop.call_soon(_hear_others, watch, 20, None)
    with pytest.raises(RedisTimeout, match=f"{4 * TIMEOUT} s"):
        await patiently(_answer(never), TIMEOUT, 4 * TIMEOUT, watch)


async def test_cancelling_the_caller_cancels_the_command() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.ensure_future(patiently(_answer(never), TIMEOUT, 4 * TIMEOUT, LoopWatch(TIMEOUT)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert never.cancelled()
