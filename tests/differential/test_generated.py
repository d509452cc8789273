"""Scenarios Hypothesis puts together: library, runtime, what the inner transport and
the server do, request body, streamed or not, and extras (a cookie, leaving the client's
block with an error). Each is played alone and coalesced, and the caller must not tell
the two apart.

Bounded and derandomized, so a run is fast and the same every time; shrinking is off
(the scenario of a failure is printed whole, and shrinking would replay failing runs
that wait out their bounds).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .scenarios import (
    LARGE,
    LIBRARIES,
    RUNTIMES,
    SMALL,
    SYNC_ONLY_BODIES,
    Route,
    Scenario,
    assert_invisible,
    assert_shared,
    base_exceptions_on,
)
from .server import DifferentialServer

#: What the server and the inner transport do, by name: (route, fault, fault_at, refused).
_BEHAVIOURS: dict[str, tuple[Route, str | None, str | int, bool]] = {
    "answers": (Route(), None, "send", False),
    "answers slowly": (Route(slow=True), None, "send", False),
    "answers a big body slowly": (Route(size=LARGE, hold_body=True), None, "send", False),
    "streams chunks": (Route(size=LARGE, mode="chunked", hold_body=True), None, "send", False),
    "streams events": (Route(size=SMALL, mode="sse", hold_body=True), None, "send", False),
    "redirects": (Route(redirect=True), None, "send", False),
    "refuses the connection": (Route(), None, "send", True),
    "closes mid small body": (Route(size=SMALL, cut=SMALL // 2), None, "send", False),
    "closes mid chunked body": (Route(size=LARGE, mode="chunked", cut=LARGE // 2), None, "send", False),
    "fails to connect": (Route(), "connect_error", "send", False),
    "fails after the head": (Route(), "read_error", "head", False),
    "fails mid small body": (Route(size=SMALL), "read_error", 2000, False),
    "fails mid big body": (Route(size=LARGE, hold_body=True), "read_error", 4000, False),
}


#: Where a BaseException is raised: before sending, after the head, mid-way through a body.
_BASE_EXCEPTION_PLACES: list[str | int] = ["send", "head", 2000]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    lib = draw(st.sampled_from(sorted(LIBRARIES)))
    runtime = draw(st.sampled_from(RUNTIMES))
    bodies = ["none", "bytes", "json", "generator", "multipart"]
    if runtime == "sync":
        bodies += sorted(SYNC_ONLY_BODIES)
    body = draw(st.sampled_from(bodies))
    stream = draw(st.booleans())
    behaviour = draw(st.sampled_from([*_BEHAVIOURS, "raises a BaseException"]))
    if behaviour == "raises a BaseException":
        fault: str | None = draw(st.sampled_from(base_exceptions_on(runtime)))
        at = draw(st.sampled_from(_BASE_EXCEPTION_PLACES))
        route = Route(size=SMALL if at == 2000 else 0)
        refused = False
    else:
        route, fault, at, refused = _BEHAVIOURS[behaviour]
    route = replace(route, cookie=draw(st.booleans()))
    return Scenario(
        lib,
        runtime,
        route=route,
        body=body,
        stream=stream,
        fault=fault,
        fault_at=at,
        refused=refused,
        leave_with_error=draw(st.booleans()),
    )


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_a_lone_caller_cannot_tell_the_transport_is_there(
    scenario: Scenario, server: DifferentialServer, upload: Path
) -> None:
    assert_invisible(scenario, server, upload)


#: What the server and the inner transport do while several callers overlap: the server
#: always holds something (the head, or with a streaming caller the body) until every
#: caller has joined, so the callers do overlap. (route, fault, fault_at)
_SHARED_BEHAVIOURS: dict[str, tuple[Route, str | None, str | int]] = {
    "answers": (Route(slow=True), None, "send"),
    "answers a big body": (Route(size=LARGE, hold_body=True), None, "send"),
    "streams chunks": (Route(size=LARGE, mode="chunked", hold_body=True), None, "send"),
    "streams events": (Route(size=SMALL, mode="sse", hold_body=True), None, "send"),
    "fails after the head": (Route(slow=True), "read_error", "head"),
    "closes mid big body": (Route(size=LARGE, hold_body=True, cut=LARGE // 2), None, "send"),
    "fails mid big body": (Route(size=LARGE, hold_body=True), "read_error", 4000),
}


@st.composite
def shared_scenarios(draw: st.DrawFn) -> Scenario:
    lib = draw(st.sampled_from(sorted(LIBRARIES)))
    runtime = draw(st.sampled_from(RUNTIMES))
    stream = draw(st.booleans())
    behaviour = draw(st.sampled_from([*_SHARED_BEHAVIOURS, "raises a BaseException"]))
    if behaviour == "raises a BaseException":
        fault: str | None = draw(st.sampled_from(base_exceptions_on(runtime)))
        at: str | int = "head"
        route = Route(slow=True)
        if stream and draw(st.booleans()):
            at, route = 4000, Route(size=LARGE, hold_body=True)
    else:
        route, fault, at = _SHARED_BEHAVIOURS[behaviour]
    if not stream:
        # Nobody sees a head before the body without streaming: hold the head instead.
        route = replace(route, slow=True, hold_body=False)
    route = replace(route, cookie=draw(st.booleans()))
    # Bodies in memory only: a streamed body passes through and is never shared.
    body = draw(st.sampled_from(["none", "bytes", "json"]))
    return Scenario(lib, runtime, route=route, body=body, stream=stream, fault=fault, fault_at=at)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=shared_scenarios(), callers=st.integers(min_value=2, max_value=4))
def test_overlapping_callers_share_one_call_and_see_what_the_first_saw(
    scenario: Scenario, callers: int, server: DifferentialServer, upload: Path
) -> None:
    assert_shared(scenario, server, upload, callers)
