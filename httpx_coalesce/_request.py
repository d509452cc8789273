"""The request side: may this request coalesce, and what are its key's parts?

A request body that is not already in memory is never read here: the request reaches
the inner transport as the caller made it (see ``body_in_memory``).
"""

from __future__ import annotations

from typing import Any

from ._key import RequestParts

__all__ = [
    "OPT_OUT_VALUES",
    "Inspection",
    "body_in_memory",
    "inspect",
    "request_parts",
    "url_parts",
]

#: Values of the opt-out header that turn coalescing off for one request.
OPT_OUT_VALUES = frozenset({"off", "false", "0", "no", "skip", "bypass"})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Inspection:
    """What one pass over a request's headers tells: may it coalesce, and its key's headers
    (raw bytes, names lower-cased)."""

    __slots__ = ("content_type", "headers", "reason")

    def __init__(self, reason: str | None, headers: list[tuple[bytes, bytes]], content_type: bytes) -> None:
        self.reason = reason
        self.headers = headers
        self.content_type = content_type


def inspect(request: Any, methods: frozenset[str], opt_out_header: str) -> Inspection:
    """Read the headers once (httpx's Headers API rescans them on every lookup).

    Strips the opt-out header: it is ours, not the server's, and never goes upstream.
    Works on the raw bytes: decoding every header of every request costs more than
    everything else done with them here.
    """
    opt_out_name = opt_out_header.encode("latin-1")
    headers: list[tuple[bytes, bytes]] = []
    opt_out: bytes | None = None
    upgrade = False
    content_type = b""
    for raw_name, value in request.headers.raw:
        name = raw_name.lower()
        if name == opt_out_name:
            opt_out = value
            continue
        if name == b"content-type":
            content_type = value
        elif name == b"host":
            value = _host(value, request.url.scheme)
        elif name == b"upgrade":
            upgrade = True
        headers.append((name, value))
    if opt_out is not None:
        del request.headers[opt_out_header]
    method = request.method
    reason = None
    if (
        opt_out is not None and opt_out.decode("latin-1").strip().lower() in OPT_OUT_VALUES
    ) or request.extensions.get("coalesce") is False:
        reason = "opt_out"
    elif method == "CONNECT" or upgrade:
        reason = "upgrade"
    elif method not in methods:
        reason = "method"
    return Inspection(reason, headers, content_type)


def url_parts(request: Any) -> tuple[str, str, int | None, bytes]:
    """Scheme, host, port (None for the scheme's default) and target of the request."""
    url = request.url
    scheme = url.scheme.lower()
    port = url.port
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, url.host.lower(), port, url.raw_path


def request_parts(request: Any, inspection: Inspection, body: bytes) -> RequestParts:
    """What a key function of the user's sees: headers decoded, names lower-case."""
    scheme, host, port, target = url_parts(request)
    return RequestParts(
        method=request.method,
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        headers=tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in inspection.headers
        ),
        body=body,
        content_type=inspection.content_type.decode("latin-1"),
    )


def _host(value: bytes, scheme: str) -> bytes:
    # httpx copies the URL's authority into Host as written; the same host must key the same.
    host = value.lower()
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default is not None and host.endswith(b":%d" % default):
        host = host[: -len(str(default)) - 1]
    return host


def body_in_memory(request: Any) -> bytes | None:
    """The request's body if it is in memory (bytes, text, JSON, form data, or a stream
    the caller already read); None for one that is still a stream (a generator, a file,
    multipart files), which is left as it is."""
    # httpx and httpx2 keep a body that is in memory as ``_content``; ``.content``
    # raises for one that is not, and an exception per request costs more.
    return getattr(request, "_content", None)
