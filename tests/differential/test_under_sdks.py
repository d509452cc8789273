"""What the SDKs' own test suites found (issue 19): under httpx2's alias, with a
transport of the other library, with ``sys.modules["httpx"]`` replaced, with a
transport that read the body itself, and with an OpenTelemetry API that raises, a
request through ``CoalescingTransport`` behaves as through its inner transport alone.

Each case is played bare and wrapped and compared, under httpx and httpx2, sync,
asyncio and trio. The alias changes ``sys.modules`` for the whole process, so its
programs run in a subprocess (``alias_program.py``), which plays the same scenarios.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import opentelemetry.metrics
import opentelemetry.trace
import pytest
import respx

import httpx_coalesce._telemetry
from httpx_coalesce import CoalescingTransport

from .scenarios import (
    LARGE,
    LIBRARIES,
    RUNTIMES,
    Route,
    Scenario,
    assert_invisible,
    assert_shared,
)
from .server import DifferentialServer

ROOT = Path(__file__).parents[2]

LIB_RUNTIME = pytest.mark.parametrize(
    ("lib", "runtime"), [(lib, runtime) for lib in LIBRARIES for runtime in RUNTIMES]
)

#: One caller each, a scenario per kind of answer: a body with a cookie, an event
#: stream whose headers come first, a refused connection, a read error mid-body.
SOLO: dict[str, dict[str, Any]] = {
    "exchange": {"route": Route(cookie=True)},
    "event-stream": {"route": Route(size=LARGE, mode="sse", hold_body=True), "stream": True},
    "refused": {"refused": True},
    "read-error": {"route": Route(size=LARGE), "fault": "read_error", "fault_at": 4000},
}


# -- a transport of the other library ------------------------------------------------------


@LIB_RUNTIME
@pytest.mark.parametrize("case", list(SOLO))
def test_a_duck_typed_transport_of_the_other_library_goes_through_as_alone(
    lib: str, runtime: str, case: str, server: DifferentialServer, upload: Path
) -> None:
    # The OpenAI SDK's workload identity: an httpx2.BaseTransport under an httpx client,
    # forwarding to the caller's own httpx transport (and the other way round).
    scenario = Scenario(lib, runtime, forwarded_by_other_library=True, **SOLO[case])
    assert_invisible(scenario, server, upload)


@LIB_RUNTIME
def test_a_duck_typed_transport_of_the_other_library_is_shared_as_its_own(
    lib: str, runtime: str, server: DifferentialServer, upload: Path
) -> None:
    scenario = Scenario(lib, runtime, route=Route(slow=True), forwarded_by_other_library=True)
    assert_shared(scenario, server, upload)


@pytest.mark.parametrize(("lib", "other"), [("httpx", "httpx2"), ("httpx2", "httpx")])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_real_transport_of_the_other_library_fails_as_it_would_alone(
    lib: str, other: str, is_async: bool, server: DifferentialServer
) -> None:
    # Alone, the other library's transport refuses a request stream not of its own
    # classes; wrapped, it gets the very request and refuses it the same way.
    client_module, inner_module = LIBRARIES[lib], LIBRARIES[other]

    def raised(coalesce: bool) -> tuple[type[BaseException], bool]:
        inner = inner_module.AsyncHTTPTransport() if is_async else inner_module.HTTPTransport()
        transport = CoalescingTransport(transport=inner) if coalesce else inner
        try:
            if is_async:

                async def post() -> None:
                    async with client_module.AsyncClient(transport=transport) as client:
                        await client.post(f"{server.url}/echo", json={"q": 1})

                anyio.run(post)
            else:
                with client_module.Client(transport=transport) as client:
                    client.post(f"{server.url}/echo", json={"q": 1})
        except Exception as error:
            frames = [frame.filename for frame in _frames(error)]
            return type(error), any("_transports" in name for name in frames)
        raise AssertionError("the request went through")

    assert raised(coalesce=True) == raised(coalesce=False)


def _frames(error: BaseException) -> Iterator[Any]:
    yield from traceback.extract_tb(error.__traceback__)


# -- sys.modules["httpx"] replaced -----------------------------------------------------------

STAND_INS: dict[str, Callable[[], object]] = {
    "an-empty-module": lambda: types.ModuleType("httpx"),
    "httpx2": lambda: LIBRARIES["httpx2"],
    "none": lambda: None,
}


@LIB_RUNTIME
@pytest.mark.parametrize("stand_in", list(STAND_INS))
def test_a_replaced_sys_modules_httpx_changes_nothing(
    lib: str,
    runtime: str,
    stand_in: str,
    server: DifferentialServer,
    upload: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", STAND_INS[stand_in]())
    assert_invisible(Scenario(lib, runtime, route=Route(cookie=True)), server, upload)
    assert_invisible(Scenario(lib, runtime, **SOLO["read-error"]), server, upload)
    assert_shared(Scenario(lib, runtime, route=Route(slow=True)), server, upload)


@pytest.mark.parametrize("stand_in", list(STAND_INS))
def test_a_library_met_first_after_sys_modules_httpx_was_replaced_is_still_itself(
    stand_in: str, server: DifferentialServer
) -> None:
    # httpx_coalesce imported before httpx: it meets httpx first at a request, when
    # sys.modules["httpx"] already holds something else.
    assert_program_invisible("replaced", stand_in, server.url)


def assert_program_invisible(*args: str) -> None:
    """Run ``alias_program.py`` with *args*: every scenario it plays is invisible."""
    program = ROOT / "tests" / "differential" / "alias_program.py"
    result = subprocess.run(
        [sys.executable, str(program), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all invisible" in result.stdout, result.stdout


# -- httpx2.alias_httpx() ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["alias-first", "coalesce-first"])
def test_under_alias_httpx_every_request_is_the_same_alone_and_coalesced(
    order: str, server: DifferentialServer
) -> None:
    assert_program_invisible(order, "-", server.url)


# -- a Response its transport already read -----------------------------------------------------

URL = "http://upstream.test/v1/chat"
ANSWER = {"answer": 42}


class _Keeping:
    """Forwards to a transport, keeping every Response it returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.returned: list[Any] = []

    def handle_request(self, request: Any) -> Any:
        response = self.inner.handle_request(request)
        self.returned.append(response)
        return response

    async def handle_async_request(self, request: Any) -> Any:
        response = await self.inner.handle_async_request(request)
        self.returned.append(response)
        return response

    def __enter__(self) -> _Keeping:
        return self

    def __exit__(self, *args: object) -> None:
        pass

    async def __aenter__(self) -> _Keeping:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _read_transport(lib: str, kind: str) -> _Keeping:
    """A transport whose Responses arrive already read: respx's, or MockTransport's."""
    module = LIBRARIES[lib]
    if kind == "respx":
        router = respx.MockRouter(assert_all_called=False)
        router.post(URL).respond(json=ANSWER, headers={"x-made-by": "respx"})
        return _Keeping(LIBRARIES["httpx"].MockTransport(router.handler))
    return _Keeping(module.MockTransport(lambda request: _made(module)))


def _made(module: Any) -> Any:
    return module.Response(200, json=ANSWER, headers={"x-made-by": "MockTransport"})


READ_CASES = [
    (lib, runtime, kind)
    for lib in LIBRARIES
    for runtime in RUNTIMES
    for kind in ("mock", "respx")
    if kind == "mock" or lib == "httpx"  # respx mocks httpx only
]


def _seen(response: Any, request: Any, transport: _Keeping) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "headers": tuple(response.headers.raw),
        "content": response.content,
        "iterated": b"".join(response.iter_bytes()),
        "extensions": sorted((k, v) for k, v in response.extensions.items() if k != "coalesce"),
        "is_the_transports": response is transport.returned[0],
        "request_is_the_callers": response.request is request,
        "closed": response.is_closed,
        "consumed": response.is_stream_consumed,
        "type": type(response),
    }


def _play_read(lib: str, runtime: str, kind: str, stream: bool, coalesce: bool) -> dict[str, Any]:
    module = LIBRARIES[lib]
    inner = _read_transport(lib, kind)
    transport = CoalescingTransport(transport=inner) if coalesce else inner
    if runtime == "sync":
        with module.Client(transport=transport) as client:
            request = client.build_request("POST", URL, json={"q": 1})
            response = client.send(request, stream=stream)
            if stream:
                response.read()
                response.close()
            return _seen(response, request, inner)
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with module.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", URL, json={"q": 1})
            response = await client.send(request, stream=stream)
            if stream:
                await response.aread()
                await response.aclose()
            seen.update(_seen(response, request, inner))

    anyio.run(main, backend=runtime)
    return seen


@pytest.mark.parametrize(("lib", "runtime", "kind"), READ_CASES)
@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
def test_a_response_its_transport_already_read_reaches_the_leader_as_the_very_object(
    lib: str, runtime: str, kind: str, stream: bool
) -> None:
    alone = _play_read(lib, runtime, kind, stream, coalesce=False)
    together = _play_read(lib, runtime, kind, stream, coalesce=True)
    assert together == alone
    assert together["is_the_transports"]
    assert together["request_is_the_callers"]


@pytest.mark.parametrize("lib", list(LIBRARIES))
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_followers_of_an_already_read_response_get_responses_of_their_own(lib: str, runtime: str) -> None:
    module = LIBRARIES[lib]
    callers = 3

    # The transport answers once every caller has joined the flight.
    def all_joined() -> bool:
        return transport.stats().waiters >= callers

    def answer_sync(request: Any) -> Any:
        assert _until(all_joined)
        return _made(module)

    async def answer_async(request: Any) -> Any:
        with anyio.fail_after(10):
            while not all_joined():
                await anyio.sleep(0.001)
        return _made(module)

    inner = _Keeping(module.MockTransport(answer_sync if runtime == "sync" else answer_async))
    transport = CoalescingTransport(transport=inner)
    results: list[tuple[int, Any, Any]] = []

    def call_sync(index: int) -> None:
        with module.Client(transport=transport) as client:
            request = client.build_request("POST", URL, json={"q": 1})
            results.append((index, request, client.send(request)))

    async def call_async(index: int) -> None:
        async with module.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", URL, json={"q": 1})
            results.append((index, request, await client.send(request)))

    if runtime == "sync":
        first = threading.Thread(target=call_sync, args=(0,))
        first.start()
        assert _until(lambda: transport.stats().waiters >= 1)
        rest = [threading.Thread(target=call_sync, args=(index,)) for index in (1, 2)]
        for thread in rest:
            thread.start()
        for thread in [first, *rest]:
            thread.join(10)
    else:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(call_async, 0)
                with anyio.fail_after(10):
                    while transport.stats().waiters < 1:
                        await anyio.sleep(0.001)
                group.start_soon(call_async, 1)
                group.start_soon(call_async, 2)

        anyio.run(main, backend=runtime)

    assert len(inner.returned) == 1
    (made,) = inner.returned
    responses = {index: (request, response) for index, request, response in results}
    assert sorted(responses) == [0, 1, 2]
    leader_request, leader = responses[0]
    assert leader is made
    assert leader.request is leader_request
    for index in (1, 2):
        request, response = responses[index]
        assert response is not made
        assert response is not leader
        assert response.request is request
        assert (response.status_code, response.json()) == (200, ANSWER)


def _until(condition: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# -- an OpenTelemetry API that raises ----------------------------------------------------------


class Broken(RuntimeError):
    """What the broken OpenTelemetry API raises."""


class _RaisingSpan:
    kind = opentelemetry.trace.SpanKind.CLIENT

    def is_recording(self) -> bool:
        return True

    def set_attributes(self, attributes: Any) -> None:
        raise Broken("set_attributes")

    def add_event(self, name: str, attributes: Any = None) -> None:
        raise Broken("add_event")


class _RaisingInstrument:
    def add(self, amount: Any, attributes: Any = None) -> None:
        raise Broken("add")

    def record(self, amount: Any, attributes: Any = None) -> None:
        raise Broken("record")


class _RaisingMeter:
    def create_counter(self, *args: Any, **kwargs: Any) -> _RaisingInstrument:
        return _RaisingInstrument()

    create_histogram = create_counter

    def create_observable_counter(self, *args: Any, **kwargs: Any) -> None:
        return None

    create_observable_up_down_counter = create_observable_counter


class _RaisingInstruments(opentelemetry.metrics.MeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return _RaisingMeter()


class _RaisingProvider(opentelemetry.metrics.MeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise Broken("get_meter")


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise Broken("the OpenTelemetry API")


def _broken_spans(patch: pytest.MonkeyPatch, get_current_span: Callable[..., Any]) -> dict[str, Any]:
    patch.setattr(opentelemetry.trace, "get_current_span", get_current_span)
    # With no span in the context at all, the transport learns so without the API: made
    # to ask it, as it does whenever a span is there.
    patch.setattr(httpx_coalesce._telemetry, "_no_span_test", lambda: None)
    return {}


#: Where the API raises, and how to make it so (patches, and the transport's options).
BROKEN: dict[str, Callable[[pytest.MonkeyPatch], dict[str, Any]]] = {
    "get_current_span": lambda patch: _broken_spans(patch, _raise),
    "the-span": lambda patch: _broken_spans(patch, _RaisingSpan),
    "get_meter_provider": lambda patch: (
        patch.setattr(opentelemetry.metrics, "get_meter_provider", _raise),
        {},
    )[1],
    "get_meter": lambda patch: {"meter_provider": _RaisingProvider()},
    "the-instruments": lambda patch: {"meter_provider": _RaisingInstruments()},
}


@LIB_RUNTIME
@pytest.mark.parametrize("where", list(BROKEN))
def test_an_opentelemetry_api_that_raises_fails_no_request(
    lib: str,
    runtime: str,
    where: str,
    server: DifferentialServer,
    upload: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(httpx_coalesce._telemetry, "_failures_logged", False)
    options = BROKEN[where](monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="httpx_coalesce"):
        assert_invisible(Scenario(lib, runtime, route=Route(cookie=True)), server, upload, options)
        assert_invisible(Scenario(lib, runtime, **SOLO["read-error"]), server, upload, options)
        # Shared: the rarer instruments (flight.callers, bytes_saved) are called too.
        assert_shared(Scenario(lib, runtime, route=Route(slow=True)), server, upload, options=options)
    failures = [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and "OpenTelemetry failed" in record.getMessage()
    ]
    # Logged once, with what raised, however many requests met it.
    assert len(failures) == 1, [record.getMessage() for record in failures]
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], Broken)
