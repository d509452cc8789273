"""The gateway as a bare ASGI app: each request becomes an httpx request sent through a
CoalescingTransport, and its response streams back as it comes.

A bare ASGI callable rather than a framework: the gateway adds a hop to every request,
and a framework's routing and request objects would cost more than everything else it
does. The request body is read whole (it is bounded, and the transport keys it); the
response body is never buffered here, so a stream reaches every client live.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import httpx

try:
    import httpx2 as http
except ImportError:  # pragma: no cover - httpx2 needs Python 3.11
    http = httpx  # type: ignore[misc]

from .. import DEFAULT_IGNORED_HEADERS, CoalesceInfo, CoalescingTransport, Limits
from ._budget import connection_budget
from ._config import CONFIG_ENV, NOT_ORIGIN_FORM, ON_CLIENT_GONE, GatewayConfig
from ._connections import upstream_transport
from ._proxy import PathRefused, request_headers, response_headers, upstream_url

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = ["FORWARDING_HEADERS", "Gateway", "app_from_env"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

access_log = logging.getLogger("httpx_coalesce.gateway.access")
logger = logging.getLogger("httpx_coalesce.gateway")

#: Added by the gateway, differing by client: out of the key, or no two clients would
#: ever share. The upstream sees the leader's.
FORWARDING_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "forwarded", "x-real-ip"})

_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_ALLOWED = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Watch:
    """Cancels the request's task when its client disconnects (flag set first, so the
    handler can tell that cancellation from the server's own)."""

    __slots__ = ("_task", "disconnected", "finished")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self.disconnected = False
        self.finished = False

    def client_gone(self) -> None:
        if not (self.finished or self.disconnected):
            self.disconnected = True
            self._task.cancel()

    async def run(self, receive: Receive) -> None:
        """For a server that does not call back (see ON_CLIENT_GONE): a task that waits
        for its ``http.disconnect``."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone()
                return


class Gateway:
    """The ASGI app of one gateway process."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._routes = config.routes
        self._timeouts = {
            "connect": config.connect_timeout,
            "read": config.read_timeout,
            "write": config.write_timeout,
            "pool": config.pool_timeout,
        }
        self._transport: CoalescingTransport | None = None
        self._metrics: Metrics | None = None
        self._local_server: asyncio.Server | None = None

    @property
    def transport(self) -> CoalescingTransport:
        """Made on first use, inside the serving event loop (its connection pool is tied to it)."""
        if self._transport is None:
            self._transport = self._start()
        return self._transport

    def _start(self) -> CoalescingTransport:
        """The transport, and the metrics it records into."""
        # The OpenTelemetry SDK and its exporter are imported with the first request,
        # so that importing the app stays cheap.
        from ._metrics import Metrics

        config = self.config
        self._metrics = Metrics()
        backend = None
        if config.redis:
            from ..redis import RedisBackend

            backend = RedisBackend.from_url(config.redis, prefix=config.redis_prefix)
        _, upstreams = connection_budget(config.max_client_connections, config.max_connections)
        inner = upstream_transport(upstreams)
        return CoalescingTransport(
            transport=inner,
            backend=backend,
            window=config.window,
            ignore_headers=DEFAULT_IGNORED_HEADERS | FORWARDING_HEADERS,
            meter_provider=self._metrics.meter_provider,
            limits=Limits(
                max_flights=config.max_flights,
                max_waiters=config.max_waiters,
                max_body_bytes=config.max_body_bytes,
                max_request_bytes=config.max_request_body,
            ),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Not proxied: the transport coalesces HTTP exchanges, and an upgraded
            # connection is none.
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.config.metrics_port is not None:
                    try:
                        await self._open_local_port(self.config.metrics_port)
                    except OSError as error:
                        await send({"type": "lifespan.startup.failed", "message": str(error)})
                        return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._local_server is not None:
                    self._local_server.close()
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            metrics.close()

    # -- one request ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        status, outcome = await self._answer(scope, method, raw_path, receive, send)
        if self.config.access_log:
            client = scope.get("client")
            # The path only: a query string may carry a key (?key=...), and headers
            # are never logged.
            access_log.info(
                '%s "%s %s" %s %s %.1fms',
                client[0] if client else "-",
                method,
                raw_path.decode("latin-1"),
                status,
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    async def _answer(
        self, scope: Scope, method: str, raw_path: bytes, receive: Receive, send: Send
    ) -> tuple[int, str]:
        """Serve one request; return its status and outcome for the access log."""
        if self.config.metrics_port is None:
            if raw_path == b"/healthz" and method in ("GET", "HEAD"):
                await _plain(send, 200, b"ok\n")
                return 200, "local"
            if raw_path == b"/metrics" and method == "GET":
                await self._serve_metrics(send)
                return 200, "local"
        if method == "TRACE":
            # It would echo the request, credentials included, back to the page that
            # sent it (nginx answers 405 too).
            await _plain(send, 405, b"TRACE is not allowed\n", extra=[(b"allow", _ALLOWED)])
            return 405, "refused"
        if method == "CONNECT" or scope.get(NOT_ORIGIN_FORM):
            await _plain(send, 400, b"only paths are served: this is not a forward proxy\n")
            return 400, "refused"
        try:
            url = upstream_url(self._routes, raw_path, scope.get("query_string", b""))
        except PathRefused as error:
            await _plain(send, 400, f"{error}\n".encode())
            return 400, "refused"
        if url is None:
            await _plain(send, 404, b"no route for this path\n")
            return 404, "refused"
        declared = _content_length(scope["headers"])
        if declared is None:
            await _plain(send, 400, b"malformed Content-Length\n")
            return 400, "refused"
        if declared > self.config.max_request_body:
            await _plain(send, 413, b"request body too large\n", close=True)
            return 413, "refused"
        try:
            body = await _read_body(receive, self.config.max_request_body)
        except _ClientGone:
            return 499, "client-gone"
        if body is None:
            await _plain(send, 413, b"request body too large\n", close=True)
            return 413, "refused"
        client = scope.get("client")
        headers = request_headers(
            scope["headers"],
            client[0] if client else None,
            scope.get("scheme", "http"),
            self.config.forwarded_headers,
        )
        content = body if body or method not in _BODYLESS or declared else None
        try:
            request = http.Request(
                method, url, headers=headers, content=content, extensions={"timeout": self._timeouts}
            )
        except (http.InvalidURL, ValueError, TypeError):
            await _plain(send, 400, b"malformed request\n")
            return 400, "refused"
        return await self._forward(scope, request, receive, send)

    async def _forward(
        self, scope: Scope, request: http.Request, receive: Receive, send: Send
    ) -> tuple[int, str]:
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task)
        watcher = None
        if ON_CLIENT_GONE in scope:
            # The gateway's own protocol calls back: no task per request to wait for it.
            scope[ON_CLIENT_GONE] = watch.client_gone
        else:
            watcher = asyncio.get_running_loop().create_task(watch.run(receive))
        # 499 (nginx's "client closed request") until a response is under way.
        status, outcome = 499, "waiting"
        try:
            try:
                response = await self.transport.handle_async_request(request)
            except http.TimeoutException:
                watch.finished = True
                await _plain(send, 504, b"upstream timed out\n")
                return 504, "error"
            except http.TransportError as error:
                watch.finished = True
                logger.info("upstream failed: %s", type(error).__name__)
                await _plain(send, 502, b"upstream unreachable\n")
                return 502, "error"
            status = response.status_code
            info = response.extensions.get("coalesce")
            outcome = _outcome(info)
            try:
                await self._relay(response, send, watch)
            except _Broken:
                # Returning with the response unfinished makes the server break the
                # connection: the client sees a truncated body, never a complete one.
                return status, outcome + ",upstream-broke"
            finally:
                await response.aclose()
            return status, outcome
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            # Our own cancellation: the client left. Its response is closed above, so
            # its seat has left the flight; the others read on.
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            return status, outcome + ",client-gone"
        finally:
            watch.finished = True
            if watcher is None:
                scope[ON_CLIENT_GONE] = None
            else:
                watcher.cancel()

    async def _relay(self, response: http.Response, send: Send, watch: _Watch) -> None:
        headers = response_headers(response.headers.raw, response.status_code)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        # With a known length the last chunk ends the response itself: one message less
        # for every buffered answer.
        remaining = _length_of(headers)
        ended = False
        stream: Any = response.stream
        try:
            # Read to its end even once the client has its last byte: a stream left at
            # its last chunk is an async generator the event loop must close later (a
            # wake-up and a task per response), and an upstream response whose end was
            # not read costs its connection (httpcore closes it rather than pool it).
            async for chunk in stream:
                if not chunk or ended:
                    continue
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        watch.finished = ended = True
                        await send({"type": "http.response.body", "body": chunk})
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except http.TransportError as error:
            if ended:
                return  # the client has the whole body: what comes after is not its business
            # Mid-body: the status is sent, so the only honest signal left is to break
            # the connection (the server closes it when the app ends unfinished).
            logger.info("upstream failed mid-body: %s", type(error).__name__)
            raise _Broken from error
        if not ended:
            watch.finished = True
            await send({"type": "http.response.body", "body": b""})

    def _render_metrics(self) -> tuple[bytes, bytes]:
        """(content type, body) of one scrape."""
        if self._transport is None:
            self._transport = self._start()
        from ._metrics import CONTENT_TYPE

        assert self._metrics is not None
        return CONTENT_TYPE, self._metrics.render()

    async def _serve_metrics(self, send: Send) -> None:
        content_type, body = self._render_metrics()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # -- the metrics port -------------------------------------------------------------

    async def _open_local_port(self, port: int) -> None:
        """/healthz and /metrics on a port of their own: outside the proxy port's
        client limits, and out of sight of its clients. Every worker listens on it
        (SO_REUSEPORT), as on the proxy port."""
        self._local_server = await asyncio.start_server(
            self._local_exchange, self.config.host, port, reuse_port=hasattr(socket, "SO_REUSEPORT")
        )

    async def _local_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one answer, then closed: all a health check or a scrape needs."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.config.client_header_timeout)
            method, target = head.split(b" ", 2)[:2]
            content_type, body, status = b"text/plain; charset=utf-8", b"not found\n", b"404 Not Found"
            if target == b"/healthz" and method in (b"GET", b"HEAD"):
                body, status = b"ok\n", b"200 OK"
            elif target == b"/metrics" and method == b"GET":
                (content_type, body), status = self._render_metrics(), b"200 OK"
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, content_type, len(body), b"" if method == b"HEAD" else body)
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()


class _Broken(Exception):
    """An upstream body that broke after its status was sent."""


def _outcome(info: object) -> str:
    if not isinstance(info, CoalesceInfo):
        return "bypassed"
    if info.from_window:
        return "window"
    return "led" if info.leader else "joined"


def _content_length(headers: Any) -> int | None:
    """The declared length (0 when there is none), or None when it is malformed."""
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.isdigit():
                return None
            return int(value)
    return 0


def _length_of(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A response's declared length, or None when it declares none (or a malformed one)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes *limit*."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _plain(
    send: Send, status: int, body: bytes, close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_TEXT, (b"content-length", str(len(body)).encode()), *(extra or ())]
    if close:
        # The rest of an unread body is not worth reading: end the connection.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_from_env() -> Gateway:
    """The app factory worker processes call: settings from the parent, via the environment."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start the gateway with `httpx-coalesce serve`")
    return Gateway(GatewayConfig.from_json(text))
