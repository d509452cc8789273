"""One caller at a time: through ``CoalescingTransport(transport=inner)`` a request must
behave exactly as through the bare inner transport (issue 11).

Each test plays a scenario twice, alone and coalesced, and compares everything the
caller and the inner transport saw (see ``scenarios.py``). The only thing allowed to
differ is ``response.extensions["coalesce"]``, which is not compared.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from httpx_coalesce import CoalescingTransport

from .recording import recording_transport
from .scenarios import (
    BASE_EXCEPTION_CASES,
    FILE_OFFSET,
    LARGE,
    LIBRARIES,
    RUNTIMES,
    SMALL,
    SYNC_ONLY_BODIES,
    Route,
    Scenario,
    assert_invisible,
    run,
)
from .server import DifferentialServer

BODY_KINDS = ("none", "bytes", "json", "generator", "file", "file-offset", "multipart")


LIB_RUNTIME = pytest.mark.parametrize(
    ("lib", "runtime"), [(lib, runtime) for lib in LIBRARIES for runtime in RUNTIMES]
)


def _with_bodies(bodies: tuple[str, ...]) -> pytest.MarkDecorator:
    """lib x runtime x body, less the file bodies an async client cannot send."""
    cases = [
        (lib, runtime, body)
        for lib in LIBRARIES
        for runtime in RUNTIMES
        for body in bodies
        if runtime == "sync" or body not in SYNC_ONLY_BODIES
    ]
    return pytest.mark.parametrize(("lib", "runtime", "body"), cases)


@_with_bodies(BODY_KINDS)
def test_a_successful_exchange_is_the_same_alone_and_coalesced(
    lib: str, runtime: str, body: str, server: DifferentialServer, upload: Path
) -> None:
    assert_invisible(Scenario(lib, runtime, body=body, route=Route(cookie=True)), server, upload)


@_with_bodies(("generator", "file", "file-offset", "multipart"))
def test_a_streamed_request_body_reaches_the_inner_transport_unread(
    lib: str, runtime: str, body: str, server: DifferentialServer, upload: Path
) -> None:
    alone, together = assert_invisible(Scenario(lib, runtime, body=body), server, upload)
    # What "the same" means here, spelled out: the caller's very request and stream,
    # not a byte of the body read, the file where the caller left it.
    (call,) = alone.seen.inner
    assert (call.request_of, call.stream_of, call.body_in_memory) == (0, 0, False)
    unread = {
        "file": ("file position", 0),
        "file-offset": ("file position", FILE_OFFSET),
        "generator": ("chunks pulled", 0),
    }
    if body in unread:
        assert call.probe == unread[body]
    assert together.recorder.calls[0].request is together.callers[0].request


@_with_bodies(("generator", "file"))
def test_a_one_shot_body_sent_again_on_a_redirect_fails_as_it_would_alone(
    lib: str, runtime: str, body: str, server: DifferentialServer, upload: Path
) -> None:
    alone, _ = assert_invisible(Scenario(lib, runtime, body=body, route=Route(redirect=True)), server, upload)
    if body == "generator":
        error = alone.seen.callers[0].error
        assert error is not None
        assert error.type is LIBRARIES[lib].StreamConsumed


@LIB_RUNTIME
@pytest.mark.parametrize("mode", ["length", "chunked", "sse"])
def test_headers_reach_a_streaming_caller_before_the_body_is_complete(
    lib: str, runtime: str, mode: str, server: DifferentialServer, upload: Path
) -> None:
    route = Route(size=LARGE, mode=mode, hold_body=True)
    alone, _ = assert_invisible(Scenario(lib, runtime, route=route, stream=True), server, upload)
    assert alone.seen.callers[0].headers_before_body is True


@LIB_RUNTIME
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "send"])
@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_a_connection_closed_mid_body_fails_where_it_would_alone(
    lib: str, runtime: str, stream: bool, size: int, mode: str, server: DifferentialServer, upload: Path
) -> None:
    route = Route(size=size, mode=mode, cut=size // 2)
    alone, _ = assert_invisible(Scenario(lib, runtime, route=route, stream=stream), server, upload)
    error = alone.seen.callers[0].error
    assert error is not None
    assert error.where == ("read" if stream else "send")


@LIB_RUNTIME
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "send"])
@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
def test_an_inner_read_error_mid_body_fails_where_it_would_alone(
    lib: str, runtime: str, stream: bool, size: int, server: DifferentialServer, upload: Path
) -> None:
    scenario = Scenario(
        lib, runtime, route=Route(size=size), stream=stream, fault="read_error", fault_at=4000
    )
    assert_invisible(scenario, server, upload)


@LIB_RUNTIME
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "send"])
def test_a_refused_connection_fails_as_it_would_alone(
    lib: str, runtime: str, stream: bool, server: DifferentialServer, upload: Path
) -> None:
    alone, _ = assert_invisible(Scenario(lib, runtime, refused=True, stream=stream), server, upload)
    error = alone.seen.callers[0].error
    assert error is not None
    assert error.type is LIBRARIES[lib].ConnectError
    assert error.is_inner_original
    assert error.traceback_through_inner


@LIB_RUNTIME
@pytest.mark.parametrize("at", ["send", "head"])
def test_an_inner_transport_error_reaches_the_caller_as_the_very_object(
    lib: str, runtime: str, at: str, server: DifferentialServer, upload: Path
) -> None:
    scenario = Scenario(lib, runtime, route=Route(slow=at == "head"), fault="read_error", fault_at=at)
    alone, _ = assert_invisible(scenario, server, upload)
    error = alone.seen.callers[0].error
    assert error is not None
    assert error.is_inner_original
    assert error.traceback_through_inner


# Where a BaseException comes from: before sending, once the head is in, mid-way through
# a small body the caller does not stream, mid-way through a big one it streams.
_BASE_EXCEPTION_PLACES: dict[str, tuple[Route, bool, str | int]] = {
    "before-sending": (Route(), False, "send"),
    "after-the-head": (Route(), False, "head"),
    "mid-small-body": (Route(size=SMALL), False, 2000),
    "mid-streamed-body": (Route(size=LARGE, hold_body=True), True, 4000),
}


@pytest.mark.parametrize(("lib", "runtime", "kind"), BASE_EXCEPTION_CASES)
@pytest.mark.parametrize("place", list(_BASE_EXCEPTION_PLACES))
def test_a_base_exception_from_the_inner_transport_reaches_its_caller_once(
    lib: str, runtime: str, kind: str, place: str, server: DifferentialServer, upload: Path
) -> None:
    route, stream, at = _BASE_EXCEPTION_PLACES[place]
    scenario = Scenario(lib, runtime, route=route, stream=stream, fault=kind, fault_at=at)
    _alone, together = assert_invisible(scenario, server, upload)
    # Spelled out: the very object, one call, nothing left for the event loop or a thread.
    error = together.seen.callers[0].error
    assert error is not None
    assert error.is_inner_original
    assert len(together.recorder.calls) == 1
    assert together.seen.escaped == ()
    assert not together.seen.hung


@LIB_RUNTIME
@pytest.mark.parametrize("leave_with_error", [False, True], ids=["clean", "with-error"])
def test_entering_and_leaving_reach_the_inner_transport_as_from_a_client(
    lib: str, runtime: str, leave_with_error: bool, server: DifferentialServer, upload: Path
) -> None:
    alone, _ = assert_invisible(Scenario(lib, runtime, leave_with_error=leave_with_error), server, upload)
    enter, leave = alone.seen.lifecycle
    assert enter[0] in {"enter", "aenter"}
    assert leave[0] in {"exit", "aexit"}


@pytest.mark.parametrize("lib", LIBRARIES)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_closing_a_client_closes_the_inner_transport_as_alone(lib: str, is_async: bool) -> None:
    module = LIBRARIES[lib]

    def closed(coalesce: bool) -> list[tuple[object, ...]]:
        inner, recorder = recording_transport(module, is_async)
        transport = CoalescingTransport(transport=inner) if coalesce else inner
        if is_async:
            anyio.run(module.AsyncClient(transport=transport).aclose)
        else:
            module.Client(transport=transport).close()
        return recorder.lifecycle

    assert closed(coalesce=True) == closed(coalesce=False)


@LIB_RUNTIME
def test_the_inner_transport_runs_in_the_callers_context(
    lib: str, runtime: str, server: DifferentialServer, upload: Path
) -> None:
    # A slow answer: the caller is waiting while the inner transport works.
    alone, _ = assert_invisible(Scenario(lib, runtime, route=Route(slow=True)), server, upload)
    (call,) = alone.seen.inner
    assert call.tenant == "caller-0"
    if runtime == "sync":
        assert (call.thread_of, call.local) == (0, "local-0")


@LIB_RUNTIME
def test_only_the_opt_out_header_is_taken_off_a_request(
    lib: str, runtime: str, server: DifferentialServer, upload: Path
) -> None:
    headers = (("x-coalesce", "off"), ("x-trace", "kept"))
    alone = run(Scenario(lib, runtime, headers=headers), server, upload, coalesce=False)
    together = run(Scenario(lib, runtime, headers=headers), server, upload, coalesce=True)
    (sent,) = together.seen.inner
    (expected,) = alone.seen.inner
    kept = tuple((name, value) for name, value in expected.headers if name.lower() != b"x-coalesce")
    assert sent.request_of == 0
    assert sent.headers == kept
    assert together.seen.callers == alone.seen.callers
    assert together.stats is not None
    assert together.stats.upstream_calls == 1
