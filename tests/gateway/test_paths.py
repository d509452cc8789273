"""Dot-segments are resolved before a route is matched, and never lead out of the route."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpx_coalesce.gateway._config import parse_route
from httpx_coalesce.gateway._proxy import PathRefused, needs_resolving, resolve_path, upstream_url

from .conftest import GatewayProcess
from .hostile import HostileUpstream, raw_request, status_of

ROUTES = (parse_route("/other=http://up/secret"), parse_route("/h=http://up/base"))


def get(gateway: GatewayProcess, target: str) -> bytes:
    return raw_request(
        gateway.port, f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
    )


def test_dot_segments_inside_the_route_are_resolved_before_the_upstream_sees_them(
    hostile_gateway: GatewayProcess, hostile: HostileUpstream
) -> None:
    answer = get(hostile_gateway, "/h/a/./b/../../echo/resolved")
    assert status_of(answer) == 200
    assert answer.endswith(b"resolved")
    assert [request.target for request in hostile.seen()] == ["/base/echo/resolved"]


@pytest.mark.parametrize(
    "target",
    [
        "/h/../../etc/passwd",  # above the root
        "/h/../other/echo/x",  # into another route: refused, not re-routed
        "/h/..",
        "/h/%2e%2e/other/echo/x",  # encoded dot-segments
        "/h/.%2E/x",
        "/h/%2E/x",
        "/h/a%2fb",  # encoded slash
        "/h/a%2F..%2Fb",
        "/h/a%5cb",  # encoded backslash
        "/h/a\\..\\b",  # backslash
    ],
)
def test_a_path_leaving_its_route_or_hiding_a_separator_is_a_400_and_never_sent(
    hostile_gateway: GatewayProcess, hostile: HostileUpstream, target: str
) -> None:
    assert status_of(get(hostile_gateway, target)) == 400
    # Pass: nothing reached the upstream (a request that reached it would be listed).
    httpx.get(hostile_gateway.url + "/h/echo/after", timeout=10)
    assert [request.target for request in hostile.seen()] == ["/base/echo/after"]


SEGMENTS = st.sampled_from(
    ["..", ".", "a", "b", "h", "other", "%2e%2e", "%2E.", ".%2e", "%2e", "%2f", "", "x%2e"]
)


@given(st.lists(SEGMENTS, max_size=8), st.sampled_from(["/h", "/other", ""]))
def test_no_path_reaches_outside_its_route(segments: list[str], start: str) -> None:
    # Pass: whatever the segments, the URL sent (as httpx will resolve it) stays under
    # the base of the route the path names, or the path is refused.
    raw = (start + "/" + "/".join(segments)).encode()
    try:
        url = upstream_url(ROUTES, raw, b"")
    except PathRefused:
        return
    if url is None:
        return
    sent = httpx.URL(url).raw_path.split(b"?")[0]
    base = b"/base" if url.startswith("http://up/base") else b"/secret"
    assert sent == base or sent.startswith(base + b"/")
    assert b"/../" not in sent + b"/"
    assert b"/./" not in sent + b"/"
    named = "/h" if raw.startswith(b"/h/") or raw == b"/h" else "/other"
    assert base == (b"/base" if named == "/h" else b"/secret")


@given(st.text(alphabet="ab./%\\2eEfFcC5\u00e9", max_size=24))
def test_a_path_with_nothing_to_resolve_is_its_own_resolution(text: str) -> None:
    # Pass: wherever needs_resolving says no (the gateway then skips resolve_path),
    # resolve_path would have returned the path as it came, or refused it as not ASCII,
    # as the shortcut does.
    raw = ("/" + text).encode()
    if needs_resolving(raw):
        return
    if not raw.isascii():
        with pytest.raises(PathRefused):
            resolve_path(raw)
        with pytest.raises(PathRefused):
            upstream_url(ROUTES, raw, b"")
        return
    assert resolve_path(raw) == raw.decode("ascii")
