"""What a reverse proxy must do to a request and a response: routes and header rules.

Only origin-form targets under a configured prefix reach an upstream, and only the
upstream configured for that prefix: the gateway is never an open proxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._config import Route

__all__ = [
    "HOP_BY_HOP",
    "PathRefused",
    "needs_resolving",
    "request_headers",
    "resolve_path",
    "response_headers",
    "upstream_url",
]

#: Headers that describe one connection, not the message (RFC 9110 section 7.6.1), and
#: the proxy's own credentials: never forwarded, either way.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Headers httpx writes itself from the request it sends (Host from the URL, the
#: length from the body it was given); the client's copies would be wrong or doubled.
_REWRITTEN = frozenset({b"host", b"content-length"})

#: Statuses whose responses never have a body (RFC 9110 sections 15.3.5 and 15.4.5).
_BODYLESS_STATUSES = frozenset({204, 304})


class PathRefused(ValueError):
    """A path the gateway will not resolve: it is answered with 400."""


#: Never in a path the gateway forwards: an encoded slash or backslash means one thing
#: to the gateway's route match and may mean another to the upstream's router.
_AMBIGUOUS = (b"%2f", b"%5c", b"\\")


def needs_resolving(raw_path: bytes) -> bool:
    """Whether *raw_path* may hold something resolve_path changes or refuses: a
    dot-segment (each follows a slash), a percent-escape or a backslash. Without them a
    path is its own resolution (an ASCII one), which every API path is: the check is the
    price of the usual request, not the walk over its segments."""
    return b"/." in raw_path or b"%" in raw_path or b"\\" in raw_path


def resolve_path(raw_path: bytes) -> str:
    """*raw_path* with its dot-segments resolved (RFC 3986 section 5.2.4), still encoded.

    Refused (PathRefused): a ``..`` that climbs above the root, a dot-segment written
    with percent-escapes (``%2e%2e``), an encoded slash or backslash, a backslash.
    """
    lowered = raw_path.lower()
    if any(marker in lowered for marker in _AMBIGUOUS):
        raise PathRefused("an encoded slash or a backslash in the path")
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise PathRefused("a path is ASCII (percent-encode the rest)") from None
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if not kept:
                raise PathRefused("the path climbs above the root")
            kept.pop()
        elif segment == ".":
            continue
        elif "%" in segment and segment.replace("%2e", ".").replace("%2E", ".") in (".", ".."):
            raise PathRefused("an encoded dot-segment in the path")
        else:
            kept.append(segment)
    if segments and segments[-1] in (".", ".."):
        kept.append("")  # "/a/b/.." is the directory "/a/", as RFC 3986 has it
    return "/" + "/".join(kept)


def _route_of(routes: Sequence[Route], path: str) -> tuple[Route, str] | None:
    for route in routes:
        prefix = route.prefix
        if prefix == "/":
            return route, path
        if path == prefix or path.startswith(prefix + "/"):
            return route, path[len(prefix) :]
    return None


def upstream_url(routes: Sequence[Route], raw_path: bytes, query: bytes) -> str | None:
    """The upstream URL for an origin-form target, or None when no route takes it.

    The path's dot-segments are resolved first, so what reaches the upstream is what
    was matched: the upstream's URL parser would resolve them after the match
    otherwise, and ``/openai/../../etc/passwd`` would leave the route. A path whose
    dot-segments move it out of the route its raw form names (``/a/../b/x``) is
    refused (PathRefused), not sent to another route. The rest of the path is used as
    the client sent it (still percent-encoded). A target that is not origin-form
    (``http://host/...``, ``host:443``, ``*``) matches nothing.
    """
    if not raw_path.startswith(b"/"):
        return None
    if needs_resolving(raw_path):
        path = resolve_path(raw_path)
        found = _route_of(routes, path)
        if path != raw_path.decode("ascii"):
            named = _route_of(routes, raw_path.decode("ascii"))
            if (named and named[0]) is not (found and found[0]):
                raise PathRefused("the path's dot-segments leave its route")
    else:
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise PathRefused("a path is ASCII (percent-encode the rest)") from None
        found = _route_of(routes, path)
    if found is None:
        return None
    route, rest = found
    url = route.upstream + rest
    if query:
        url += "?" + query.decode("ascii", "replace")
    return url


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    client: str | None,
    scheme: str,
    forwarded: bool,
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream should get them."""
    dropped = _connection_tokens(headers)
    kept: list[tuple[bytes, bytes]] = []
    forwarded_for: bytes | None = None
    for name, value in headers:
        lowered = name.lower()
        if (
            lowered in HOP_BY_HOP
            or lowered in _REWRITTEN
            or lowered.startswith(b"proxy-")
            or lowered in dropped
        ):
            continue
        if forwarded and lowered in (b"x-forwarded-for", b"x-forwarded-proto"):
            # Rewritten below: one of each, whatever the client sent.
            if lowered == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            continue
        kept.append((lowered, value))
    if forwarded:
        # The chain the client brought, then the address this gateway saw.
        if client is not None:
            address = client.encode("latin-1")
            forwarded_for = address if forwarded_for is None else forwarded_for + b", " + address
        if forwarded_for is not None:
            kept.append((b"x-forwarded-for", forwarded_for))
        kept.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    return kept


def response_headers(headers: Sequence[tuple[bytes, bytes]], status: int) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as the client should get them.

    Content-Length stays: the body passes through as the upstream encoded it, so its
    length is the upstream's. Transfer-Encoding goes: the gateway's server frames the
    body on its own connection. A 204 or 304 carries no body, so no length either (one
    an upstream sent anyway would announce bytes that never come).
    """
    dropped = _connection_tokens(headers)
    if status in _BODYLESS_STATUSES:
        dropped = dropped | {b"content-length"}
    return [
        (name, value)
        for name, value in headers
        if not (
            (lowered := name.lower()) in HOP_BY_HOP or lowered.startswith(b"proxy-") or lowered in dropped
        )
    ]
