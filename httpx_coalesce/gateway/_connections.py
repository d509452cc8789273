"""Upstream connections that are never reused once a response's end is in doubt.

httpcore pools an HTTP/1.1 connection as soon as h11 has read a complete response, and
h11 keeps whatever bytes came after it for the next response on that connection. So an
upstream that answers ``204`` with a body, ``HEAD`` with a body, or more bytes than its
Content-Length hands those bytes to the next request sent on the connection: another
client's. nginx and Envoy treat such bytes as an upstream error and drop the connection;
so does this pool:

- bytes already received past the end of a response close the connection instead of
  pooling it (the client still gets the response as framed);
- a response that cannot carry a body (``1xx``, ``204``, ``304``, any answer to
  ``HEAD``) but declares one (a nonzero Content-Length, or Transfer-Encoding) closes
  the connection: its body may still be on the way;
- Content-Length together with Transfer-Encoding (RFC 9112 section 6.3: a sign of
  smuggling) fails the request with a protocol error (the gateway's 502) and the
  connection is closed.

Bytes that arrive after the connection went idle are caught by httpcore itself: an idle
connection whose socket is readable counts as expired and is closed before reuse.

The fix lives here, one layer under the gateway's transport, because only the
connection sees where h11's response ended; the classes subclass httpcore's own and
change nothing else (same pool, same limits, same exceptions).
"""

from __future__ import annotations

from typing import Any

try:
    import httpcore2 as core
    import httpx2 as http
    from httpcore2._async.connection import AsyncHTTPConnection
    from httpcore2._async.http11 import AsyncHTTP11Connection
except ImportError:  # pragma: no cover - httpx2 needs Python 3.11
    import httpcore as core  # type: ignore[no-redef]
    import httpx as http  # type: ignore[no-redef]
    from httpcore._async.connection import AsyncHTTPConnection  # type: ignore[assignment]
    from httpcore._async.http11 import AsyncHTTP11Connection  # type: ignore[assignment]

__all__ = ["upstream_transport"]

_NO_BODY_STATUSES = frozenset({204, 304})


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool, bool]:
    """(has Content-Length, has one other than 0, has Transfer-Encoding)."""
    length = nonzero = encoded = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            length = True
            nonzero = nonzero or value.strip() != b"0"
        elif lowered == b"transfer-encoding":
            encoded = True
    return length, nonzero, encoded


class _StrictHTTP11Connection(AsyncHTTP11Connection):
    _reusable = True

    async def _receive_response_headers(
        self, request: Any
    ) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]], bytes]:
        received = await super()._receive_response_headers(request)
        status, headers = received[1], received[3]
        length, nonzero, encoded = _framing(headers)
        if encoded and length:
            raise core.RemoteProtocolError("the upstream sent both Content-Length and Transfer-Encoding")
        bodiless = request.method == b"HEAD" or status in _NO_BODY_STATUSES or status < 200
        if bodiless and (nonzero or encoded):
            self._reusable = False
        return received

    async def _response_closed(self) -> None:
        leftover, _ = self._h11_state.trailing_data
        if self._reusable and not leftover:
            await super()._response_closed()
            return
        async with self._state_lock:
            await self.aclose()


class _StrictConnection(AsyncHTTPConnection):
    async def handle_async_request(self, request: Any) -> Any:
        if self._connection is None:
            try:
                async with self._request_lock:
                    if self._connection is None:
                        stream = await self._connect(request)
                        self._connection = _StrictHTTP11Connection(
                            origin=self._origin, stream=stream, keepalive_expiry=self._keepalive_expiry
                        )
            except BaseException:
                self._connect_failed = True
                raise
        # With the connection made, httpcore's own method only hands the request on.
        return await super().handle_async_request(request)


class _StrictPool(core.AsyncConnectionPool):
    def create_connection(self, origin: Any) -> Any:
        return _StrictConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=True,
            http2=False,
            retries=self._retries,
            local_address=self._local_address,
            uds=self._uds,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )


def upstream_transport(max_connections: int) -> http.AsyncHTTPTransport:
    """httpx's HTTP/1.1 transport whose pool never reuses a suspect connection."""
    limits = http.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = http.AsyncHTTPTransport(limits=limits)
    # The transport's own pool, made with the same settings, swapped for ours: the
    # transport maps the same exceptions and streams the same way.
    transport._pool = _StrictPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        ssl_context=transport._pool._ssl_context,
    )
    return transport
