"""Identical callers overlapping in time: the one difference coalescing may make.

Three callers, each with a client of its own over one ``CoalescingTransport``, send the
same request while the first one's is held at the server (or its body is). The inner
transport must be called once, with the first caller's request, in its context; the
first caller must see exactly what it would have seen alone, and every other caller the
same, less what belongs to the first caller only: its ``Set-Cookie``, its connection
(the ``network_stream`` extension), and the very exception object (a follower gets a
fresh one, tied to its own request, caused by it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenarios import (
    BASE_EXCEPTION_CASES,
    LARGE,
    LIBRARIES,
    RUNTIMES,
    Route,
    Scenario,
    assert_shared,
    without_cookies,
    without_network_stream,
)
from .server import DifferentialServer

CALLERS = 3

LIB_RUNTIME = pytest.mark.parametrize(
    ("lib", "runtime"), [(lib, runtime) for lib in LIBRARIES for runtime in RUNTIMES]
)


_SHAPES = {
    # The server holds the whole answer until every caller has joined.
    "held-head": (Route(slow=True), False),
    # The server sends the head and holds a big body; every caller streams.
    "live-body": (Route(size=LARGE, hold_body=True), True),
    "live-event-stream": (Route(size=LARGE, mode="sse", hold_body=True), True),
}


@LIB_RUNTIME
@pytest.mark.parametrize("shape", list(_SHAPES))
def test_identical_overlapping_callers_share_one_call_and_see_the_same(
    lib: str, runtime: str, shape: str, server: DifferentialServer, upload: Path
) -> None:
    route, stream = _SHAPES[shape]
    scenario = Scenario(lib, runtime, route=route, stream=stream)
    alone, together = assert_shared(scenario, server, upload, CALLERS)
    assert alone.error is None
    followers = tuple(without_network_stream(seen) for seen in together.seen.callers[1:])
    assert followers == (without_network_stream(alone),) * (CALLERS - 1)
    assert together.stats is not None
    assert together.stats.coalesced == CALLERS - 1
    assert [seen.coalesce.leader for seen in together.seen.callers] == [True] + [False] * (CALLERS - 1)


@LIB_RUNTIME
def test_a_set_cookie_reaches_only_the_caller_whose_request_was_sent(
    lib: str, runtime: str, server: DifferentialServer, upload: Path
) -> None:
    scenario = Scenario(lib, runtime, route=Route(slow=True, cookie=True))
    alone, together = assert_shared(scenario, server, upload, CALLERS)
    assert alone.cookies == (("session", "s3cret"),)
    assert any(name.lower() == b"set-cookie" for name, _ in alone.headers or ())
    followers = tuple(without_network_stream(seen) for seen in together.seen.callers[1:])
    assert followers == (without_network_stream(without_cookies(alone)),) * (CALLERS - 1)


_ERROR_SHAPES: dict[str, tuple[Route, bool, str | None, str | int]] = {
    "before-the-head": (Route(slow=True), False, "read_error", "head"),
    "connection-closed-mid-body": (Route(size=LARGE, hold_body=True, cut=LARGE // 2), True, None, "send"),
    "inner-error-mid-body": (Route(size=LARGE, hold_body=True), True, "read_error", 4000),
}


@LIB_RUNTIME
@pytest.mark.parametrize("shape", list(_ERROR_SHAPES))
def test_the_leader_gets_the_original_error_and_followers_fresh_ones_caused_by_it(
    lib: str, runtime: str, shape: str, server: DifferentialServer, upload: Path
) -> None:
    route, stream, fault, at = _ERROR_SHAPES[shape]
    scenario = Scenario(lib, runtime, route=route, stream=stream, fault=fault, fault_at=at)
    alone, together = assert_shared(scenario, server, upload, CALLERS)
    assert alone.error is not None
    assert alone.error.is_inner_original
    assert alone.error.traceback_through_inner
    assert together.seen.callers[0].error == alone.error


@pytest.mark.parametrize(("lib", "runtime", "kind"), BASE_EXCEPTION_CASES)
@pytest.mark.parametrize("shape", ["before-the-head", "mid-body"])
def test_a_base_exception_reaches_the_leader_and_followers_get_transport_errors(
    lib: str, runtime: str, kind: str, shape: str, server: DifferentialServer, upload: Path
) -> None:
    if shape == "before-the-head":
        scenario = Scenario(lib, runtime, route=Route(slow=True), fault=kind, fault_at="head")
        expected: type[BaseException] = LIBRARIES[lib].TransportError
    else:
        route = Route(size=LARGE, hold_body=True)
        scenario = Scenario(lib, runtime, route=route, stream=True, fault=kind, fault_at=4000)
        expected = LIBRARIES[lib].ReadError
    # The leader's caller: the very object; followers: exactly this library's error,
    # caused by it; one call; nothing hangs or escapes (all checked by assert_shared).
    alone, together = assert_shared(scenario, server, upload, CALLERS)
    assert alone.error is not None
    assert alone.error.is_inner_original
    assert len(together.recorder.calls) == 1
    assert [seen.error.type for seen in together.seen.callers[1:] if seen.error] == [expected] * (CALLERS - 1)
