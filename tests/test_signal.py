"""The asyncio signal's answered wait: the answer comes in each waiter's own future."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from httpx_coalesce._signal import AsyncioSignal


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_waiters_for_an_answer_wait_on_through_firings_that_bring_none() -> None:
    async def scenario() -> None:
        lock = threading.Lock()
        signal = AsyncioSignal(asyncio.get_running_loop())
        answer: list[str | None] = [None]
        with lock:
            waiters = [signal.wait_answer(lambda: answer[0], within=60.0) for _ in range(3)]
        with lock:
            signal.fire()  # "look again", but there is nothing to see yet
        await asyncio.sleep(0)
        assert not any(waiter.done() for waiter in waiters)
        answer[0] = "head"
        with lock:
            signal.fire()
        assert [await waiter for waiter in waiters] == ["head"] * 3

    run(scenario)


def test_an_answered_wait_gives_none_once_its_own_deadline_passes() -> None:
    async def scenario() -> None:
        signal = AsyncioSignal(asyncio.get_running_loop())
        soon = signal.wait_answer(lambda: None, within=0.01)
        later = signal.wait_answer(lambda: None, within=60.0)
        assert await soon is None
        assert not later.done()  # its deadline is its own
        signal.fire()  # still no answer: the later waiter waits on
        await asyncio.sleep(0)
        assert not later.done()
        later.cancel()

    run(scenario)


def test_one_cancelled_waiter_leaves_the_others_their_answer() -> None:
    async def scenario() -> None:
        signal = AsyncioSignal(asyncio.get_running_loop())
        answer: list[str | None] = [None]

        async def wait() -> str | None:
            result: str | None = await signal.wait_answer(lambda: answer[0], within=60.0)
            return result

        tasks = [asyncio.create_task(wait()) for _ in range(3)]
        await asyncio.sleep(0)
        tasks[0].cancel()
        await asyncio.sleep(0)
        answer[0] = "head"
        signal.fire()
        assert tasks[0].cancelled()
        assert [await task for task in tasks[1:]] == ["head", "head"]

    run(scenario)


def test_an_answered_signal_keeps_nothing_of_its_question() -> None:
    # A flight asks its own bound method: kept by the flight's signal, it would make a
    # cycle that only the cyclic collector frees (and the flight, its body with it).
    class Flight:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.signal = AsyncioSignal(loop)

        def outcome(self) -> str:
            return "head"

    async def scenario() -> None:
        flight = Flight(asyncio.get_running_loop())
        waiter = flight.signal.wait_answer(flight.outcome)
        flight.signal.fire()
        assert await waiter == "head"
        gone = weakref.ref(flight)
        gc.disable()
        try:
            del flight
            assert gone() is None
        finally:
            gc.enable()

    run(scenario)
