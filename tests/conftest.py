from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from .upstream import Upstream

LIBRARIES: list[ModuleType] = [httpx]
try:
    import httpx2

    LIBRARIES.append(httpx2)
except ImportError:  # pragma: no cover - httpx2 needs Python 3.11
    pass


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=LIBRARIES, ids=lambda module: module.__name__)
def lib(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[tuple[Upstream, LocalServer]]:
    upstream = Upstream()
    with LocalServer(upstream.app) as server:
        yield upstream, server


@pytest.fixture
def upstream(_upstream_server: tuple[Upstream, LocalServer]) -> Iterator[Upstream]:
    state, _ = _upstream_server
    state.reset_state()
    yield state
    state.reset_state()


@pytest.fixture
def base_url(_upstream_server: tuple[Upstream, LocalServer]) -> str:
    return _upstream_server[1].url


@pytest.fixture
def make_transport() -> Iterator[Callable[..., CoalescingTransport]]:
    """Transports made here are checked after the test: no flight may be left behind."""
    made: list[CoalescingTransport] = []

    def make(**options: Any) -> CoalescingTransport:
        transport = CoalescingTransport(**options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        stats = transport.stats()
        assert (stats.in_flight, stats.waiters) == (0, 0), f"leaked flights: {stats}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis on 6379 if it answers, else one started here; never a skip."""
    # Imported here: the recipes' Instructor run loads this file without Redis installed.
    from .support.redis_server import shared_or_own_redis

    with shared_or_own_redis() as url:
        yield url


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[FakeLLMAPI, str]]:
    """One fake LLM API (every SDK's dialect) for the SDK and recipe tests."""
    api = FakeLLMAPI()
    with LocalServer(api.app, on_stop=api.close) as server:
        yield api, server.url


@pytest.fixture
def url(fake_server: tuple[FakeLLMAPI, str]) -> str:
    return fake_server[1]


@pytest.fixture
def api(fake_server: tuple[FakeLLMAPI, str]) -> Iterator[FakeLLMAPI]:
    """The fake API, reset to answer at once with nothing held."""
    api = fake_server[0]
    api.latency = api.stream_gap = 0.0
    api.gate = api.hold = None
    api.reset()
    yield api
    # Release whatever a failed test left waiting, and let its streams end before the next test.
    for event in (api.gate, api.hold):
        if event is not None:
            event.set()
    api.gate = api.hold = None
    until_sync(lambda: api.open_streams == 0 and api.held == 0)


async def until(
    condition: Callable[[], bool], timeout: float = 10.0, describe: Callable[[], str] | None = None
) -> None:
    """Wait for a condition to hold (tests overlap requests on conditions, not on time).

    If it never does, the TimeoutError says what *describe* saw then (the state the
    condition looks at), so a failure tells which part of it did not hold."""
    try:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.001)
    except TimeoutError:
        _timed_out(timeout, describe)
        raise


async def until_in_thread(
    condition: Callable[[], bool],
    timeout: float = 10.0,
    describe: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> None:
    """``until`` for a condition that blocks (it asks a server): looked at in a worker
    thread every *interval* seconds. Blocking calls every millisecond in the event loop
    would starve the transports under test that run in it."""
    try:
        with anyio.fail_after(timeout):
            while not await anyio.to_thread.run_sync(condition):
                await anyio.sleep(interval)
    except TimeoutError:
        _timed_out(timeout, describe)
        raise


def _timed_out(timeout: float, describe: Callable[[], str] | None) -> None:
    if describe is not None:
        raise TimeoutError(f"condition never held within {timeout} s; saw: {describe()}") from None


def until_sync(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        time.sleep(0.001)


def drop_into_a_cycle(response: Any) -> weakref.ref[Any]:
    """Drop the caller's only reference in a way only the cyclic collector can free; a
    weak reference tells when it has."""
    dropped = weakref.ref(response)
    cycle: list[Any] = [response]
    cycle.append(cycle)
    return dropped


def collect_garbage_holding(lock: threading.Lock, dropped: weakref.ref[Any]) -> threading.Event:
    """Run the cyclic collector in a new thread that holds *lock*, as a collection set off
    by an allocation inside a locked section would, until *dropped* is collected; the
    event is set once it is.

    Again and again: ``gc.collect()`` does nothing while another thread's collection is
    running (after a long run, finalizers of what earlier tests left behind can keep one
    going for seconds), and the lock must be held in the collection that frees it.
    """
    collected = threading.Event()

    def collect() -> None:
        deadline = time.monotonic() + 10
        with lock:
            gc.collect()
            while dropped() is not None and time.monotonic() < deadline:
                time.sleep(0.005)  # let the other collection finish; nothing to wait on
                gc.collect()
        if dropped() is None:
            collected.set()

    threading.Thread(target=collect, daemon=True).start()
    return collected
