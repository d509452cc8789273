"""Making identical calls overlap on conditions, not on time (the SDK, recipe and loopback tests).

The fake API holds each upstream attempt (``api.hold``, or ``api.gate`` after the first event of a
stream) until every caller is attached to it in the transport, and only then lets it answer. A
choreography says when that is; ``overlap`` and ``overlap_threads`` run the callers and follow it.
Nothing here sleeps to make calls overlap.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import anyio

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until, until_sync
from ..upstream import Upstream

T = TypeVar("T")


class Choreography(Protocol):
    """When the callers may go on: ``phases`` times, wait until ``ready(phase)``, then ``release(phase)``."""

    @property
    def phases(self) -> int: ...

    def ready(self, phase: int) -> bool: ...

    def release(self, phase: int) -> None: ...

    def release_all(self) -> None: ...


class Conductor:
    """Every upstream attempt waits at the fake API until all callers have joined its flight.

    ``attempts`` is how many upstream attempts the callers go through (more than one when the fake is
    scripted to fail and the SDKs retry); ``flights`` is how many flights run side by side in each
    attempt (one per tenant). An attempt is held before it answers (``api.hold``); the last attempt of a
    ``stream`` is held after its first event instead (``api.gate``), so its head is already out.
    """

    def __init__(
        self,
        api: FakeLLMAPI,
        transport: CoalescingTransport,
        callers: int,
        *,
        attempts: int = 1,
        flights: int = 1,
        stream: bool = False,
    ) -> None:
        self.api = api
        self.transport = transport
        self.callers = callers
        self.flights = flights
        self._attempts = attempts
        self._holds = [threading.Event() for _ in range(attempts - 1 if stream else attempts)]
        self._gate = threading.Event() if stream else None
        api.hold = self._holds[0] if self._holds else None
        api.gate = self._gate

    @property
    def phases(self) -> int:
        return self._attempts

    def ready(self, phase: int) -> bool:
        stats = self.transport.stats()
        if (self.api.hits, stats.in_flight, stats.waiters) != (
            self.flights * (phase + 1),
            self.flights,
            self.callers,
        ):
            return False
        # Held, not merely counted: only then is it safe to swap in the next attempt's hold.
        return phase >= len(self._holds) or self.api.held == self.flights

    def release(self, phase: int) -> None:
        if phase < len(self._holds):
            following = phase + 1
            self.api.hold = self._holds[following] if following < len(self._holds) else None
            self._holds[phase].set()
        elif self._gate is not None:
            self._gate.set()

    def release_all(self) -> None:
        self.api.hold = None
        for event in [*self._holds, self._gate]:
            if event is not None:
                event.set()


class HeldAtServer:
    """For calls that pass the transport by: hold them at the fake API until ``callers`` arrived."""

    def __init__(self, api: FakeLLMAPI, callers: int) -> None:
        self.api = api
        self.callers = callers
        self._hold = api.hold = threading.Event()

    @property
    def phases(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        return self.api.held == self.callers

    def release(self, phase: int) -> None:
        self._hold.set()

    def release_all(self) -> None:
        self.api.hold = None
        self._hold.set()


class OneFlight:
    """All callers join one flight: its one attempt is held before it answers (``api.hold``), or a
    ``stream`` after its first event (``api.gate``), until every caller waits on it. Unlike
    ``Conductor`` it does not count the API's hits: an SDK may make calls of its own beside it."""

    def __init__(self, api: FakeLLMAPI, transport: CoalescingTransport, callers: int, stream: bool) -> None:
        self.api = api
        self.transport = transport
        self.callers = callers
        self.stream = stream
        self._event = threading.Event()
        if stream:
            api.gate = self._event
        else:
            api.hold = self._event

    @property
    def phases(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        stats = self.transport.stats()
        if (stats.in_flight, stats.waiters) != (1, self.callers):
            return False
        return self.stream or self.api.held == 1

    def release(self, phase: int) -> None:
        self.release_all()

    def release_all(self) -> None:
        self.api.gate = self.api.hold = None
        self._event.set()


class AtTheGate:
    """For the loopback upstream (tests/upstream.py): it holds every request at its gate until
    ``ready()`` (say, every caller waits in the transport), runs ``while_waiting``, then opens it."""

    def __init__(
        self, upstream: Upstream, ready: Callable[[], bool], while_waiting: Callable[[], None] | None = None
    ) -> None:
        self.upstream = upstream
        self._ready = ready
        self._while_waiting = while_waiting
        upstream.hold()

    @property
    def phases(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        return self._ready()

    def release(self, phase: int) -> None:
        if self._while_waiting is not None:
            self._while_waiting()
        self.upstream.gate.set()

    def release_all(self) -> None:
        self.upstream.gate.set()


async def overlap(choreography: Choreography, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run *calls* as concurrent tasks, releasing the fake API as the choreography says; their results."""
    results: dict[int, T] = {}

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    try:
        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(run, index, call)
            for phase in range(choreography.phases):
                await until(partial(choreography.ready, phase))
                choreography.release(phase)
    finally:
        choreography.release_all()
    return [results[index] for index in range(len(calls))]


async def overlapping(
    upstream: Upstream,
    transport: CoalescingTransport,
    calls: Sequence[Callable[[], Awaitable[T]]],
    *,
    ready: Callable[[], bool] | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> list[T]:
    """Runs *calls* at once against the loopback upstream, which holds them until *ready* (by
    default: until every one waits in the transport, so that they share a flight); their results."""

    def every_caller_waits() -> bool:
        return transport.stats().waiters == len(calls)

    return await overlap(AtTheGate(upstream, ready or every_caller_waits, while_waiting), calls)


def overlap_threads(choreography: Choreography, calls: Sequence[Callable[[], T]]) -> list[T]:
    """The same with threads: every call in a thread of its own (sync SDK clients)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]

        def ready_or_failed(phase: int) -> bool:
            return choreography.ready(phase) or any(f.done() and f.exception() for f in futures)

        try:
            for phase in range(choreography.phases):
                until_sync(partial(ready_or_failed, phase))
                for future in futures:
                    if future.done():
                        future.result()  # a caller failed early: raise its error, not a time-out
                choreography.release(phase)
        finally:
            choreography.release_all()
        return [future.result(timeout=10) for future in futures]
