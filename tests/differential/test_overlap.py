"""Identical callers overlapping in time: the one difference coalescing may make.

Three callers, each with a client of its own over one ``CoalescingTransport``, send the
same request while the first one's is held at the server (or its body is). The inner
transport must be called once, with the first caller's request, in its context; the
first caller must see exactly what it would have seen alone, and every other caller the
same, less what belongs to the first caller only: its ``Set-Cookie``, and the very
exception object (a follower gets a fresh one, tied to its own request, caused by it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from .scenarios import (
    BASE_EXCEPTIONS,
    LIBRARIES,
    RUNTIMES,
    CallerSeen,
    Outcome,
    Route,
    Scenario,
    run,
    without_cookies,
)
from .server import DifferentialServer

CALLERS = 3
LARGE = 64 * 1024

LIB_RUNTIME = pytest.mark.parametrize(
    ("lib", "runtime"), [(lib, runtime) for lib in LIBRARIES for runtime in RUNTIMES]
)


def _alone_and_overlapping(
    scenario: Scenario, server: DifferentialServer, upload: Path
) -> tuple[CallerSeen, Outcome]:
    alone = run(scenario, server, upload, coalesce=False)
    assert not alone.seen.hung
    assert alone.seen.escaped == ()
    together = run(scenario, server, upload, coalesce=True, callers=CALLERS)
    assert not together.seen.hung, together.seen
    assert together.seen.escaped == ()
    # One call, with the first caller's request, in the first caller's context.
    assert together.seen.inner == alone.seen.inner
    assert together.stats is not None
    assert together.stats.upstream_calls == 1, together.stats
    return alone.seen.callers[0], together


def _as_follower(seen: CallerSeen, error_type: type[BaseException] | None = None) -> CallerSeen:
    """What a follower must see, given what the caller saw alone."""
    seen = without_cookies(seen)
    if seen.error is None:
        return seen
    error = replace(
        seen.error,
        type=error_type or seen.error.type,
        # A fresh exception: the follower's own request, caused by the original.
        request="own",
        is_inner_original=False,
        cause_is_inner_original=True,
        # Where a follower's traceback runs is not specified; its message only for a
        # BaseException turned into a transport error.
        traceback_through_inner=False,
        message="" if error_type is not None else seen.error.message,
    )
    return replace(seen, error=error)


def _comparable(seen: CallerSeen, keep_message: bool = True) -> CallerSeen:
    if seen.error is None:
        return seen
    error = replace(
        seen.error, traceback_through_inner=False, message=seen.error.message if keep_message else ""
    )
    return replace(seen, error=error)


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
    alone, together = _alone_and_overlapping(
        Scenario(lib, runtime, route=route, stream=stream), server, upload
    )
    leader, *followers = together.seen.callers
    assert leader == alone
    assert followers == [alone] * (CALLERS - 1)
    assert [seen.coalesce.leader for seen in together.seen.callers] == [True] + [False] * (CALLERS - 1)


@LIB_RUNTIME
def test_a_set_cookie_reaches_only_the_caller_whose_request_was_sent(
    lib: str, runtime: str, server: DifferentialServer, upload: Path
) -> None:
    scenario = Scenario(lib, runtime, route=Route(slow=True, cookie=True))
    alone, together = _alone_and_overlapping(scenario, server, upload)
    assert alone.cookies == (("session", "s3cret"),)
    leader, *followers = together.seen.callers
    assert leader == alone
    assert leader.coalesce.leader is True
    assert followers == [without_cookies(alone)] * (CALLERS - 1)


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
    alone, together = _alone_and_overlapping(scenario, server, upload)
    assert alone.error is not None
    assert alone.error.is_inner_original
    assert alone.error.traceback_through_inner
    leader, *followers = together.seen.callers
    assert leader == alone
    assert [_comparable(seen) for seen in followers] == [_as_follower(alone)] * (CALLERS - 1)


def _base_exception_cases() -> list[tuple[str, str, str]]:
    return [
        (lib, runtime, kind)
        for lib in LIBRARIES
        for runtime in RUNTIMES
        for kind in BASE_EXCEPTIONS
        if kind != "cancelled" or runtime == "asyncio"
    ]


@pytest.mark.parametrize(("lib", "runtime", "kind"), _base_exception_cases())
@pytest.mark.parametrize("shape", ["before-the-head", "mid-body"])
def test_a_base_exception_reaches_the_leader_and_followers_get_transport_errors(
    lib: str, runtime: str, kind: str, shape: str, server: DifferentialServer, upload: Path
) -> None:
    module = LIBRARIES[lib]
    if shape == "before-the-head":
        scenario = Scenario(lib, runtime, route=Route(slow=True), fault=kind, fault_at="head")
        follower_error: type[BaseException] = module.TransportError
    else:
        route = Route(size=LARGE, hold_body=True)
        scenario = Scenario(lib, runtime, route=route, stream=True, fault=kind, fault_at=4000)
        follower_error = module.ReadError
    alone, together = _alone_and_overlapping(scenario, server, upload)
    leader, *followers = together.seen.callers
    # The very object, raised where the leader's caller runs; sent once; no hang.
    assert leader == alone
    assert len(together.recorder.calls) == 1
    expected = _as_follower(alone, follower_error)
    assert [_comparable(seen, keep_message=False) for seen in followers] == [expected] * (CALLERS - 1)
