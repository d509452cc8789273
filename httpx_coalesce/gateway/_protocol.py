"""uvicorn's httptools protocol, with what a server on an untrusted network must bound.

uvicorn gives a keep-alive timeout and little else: a client may take forever to send
its head or body, never read its response, send an endless header, or open connections
until the process runs out of descriptors. This protocol adds, each from a flag
(nginx's defaults beside them in README's table of limits):

- a head timeout (from the connection, or the request's first byte, to the end of its
  head) and a body timeout (between two parts of a body): 408, then closed;
- a send timeout: a client whose socket takes nothing of its response for that long is
  dropped, so it leaves its flight and the other callers go on;
- limits on the request line (414), the head's size and its number of fields (431),
  checked as bytes arrive, so an endless head costs one read buffer, not memory;
- a cap on client connections: past it the oldest idle connection (one waiting for a
  request) is closed, as nginx reuses them, and only when none is idle is the new one
  answered 503;
- request trailers dropped (httptools reports them as headers, which uvicorn appended
  to the request's own);
- a close-delimited body for an HTTP/1.0 client when the length is unknown (uvicorn
  would send it chunked, which HTTP/1.0 does not have);
- targets not in origin form (``GET http://host/x``) marked, for the app to refuse:
  httptools hands ASGI only the path;
- the app told when its client is gone, as the connection is lost, so it needs no task
  of its own per request to wait for uvicorn's ``http.disconnect``.

A module of its own, imported only to serve: it needs uvicorn, and worker processes find
the class by name. Its settings come from the environment the parent wrote.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ._budget import connection_budget
from ._config import CONFIG_ENV, NOT_ORIGIN_FORM, ON_CLIENT_GONE, GatewayConfig

__all__ = ["GatewayProtocol"]


@dataclass(frozen=True, slots=True)
class _Bounds:
    header_timeout: float
    body_timeout: float
    send_timeout: float
    max_clients: int
    max_request_line: int
    max_header_bytes: int
    max_headers: int


@functools.cache
def _bounds() -> _Bounds:
    text = os.environ.get(CONFIG_ENV)
    config = GatewayConfig.from_json(text) if text else GatewayConfig(routes=())
    clients, _ = connection_budget(config.max_client_connections, config.max_connections)
    return _Bounds(
        header_timeout=config.client_header_timeout,
        body_timeout=config.client_body_timeout,
        send_timeout=config.send_timeout,
        max_clients=clients,
        max_request_line=config.max_request_line,
        max_header_bytes=config.max_header_bytes,
        max_headers=config.max_headers,
    )


#: Connections of this process waiting for a request, oldest first: the first to close
#: when a new connection finds the limit reached.
_idle: dict[GatewayProtocol, None] = {}

_REASONS = {
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _Refused(Exception):
    """Raised from a parser callback: the request is answered *status* and the
    connection closed."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _error(status: int, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        % (
            status,
            _REASONS[status],
            len(body),
        )
        + b"connection: close\r\n\r\n"
        + body
    )


class _CloseDelimitedCycle(RequestResponseCycle):
    """An HTTP/1.0 exchange: a body of unknown length is ended by closing, not chunked."""

    _close_delimited = False

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            status = message["status"]
            names = {name.lower() for name, _ in message.get("headers", [])}
            if b"content-length" not in names and self.scope["method"] != "HEAD" and status not in (204, 304):
                self._close_delimited = True
                # Known, so uvicorn adds no Transfer-Encoding; the body is written below.
                self.chunked_encoding = False
        elif kind == "http.response.body" and self._close_delimited and not self.response_complete:
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            body = message.get("body", b"")
            if body:
                self.transport.write(body)
            if not message.get("more_body", False):
                self.response_complete = True
                self.message_event.set()
                self.transport.close()
                self.on_response()
            return
        await super().send(message)


class GatewayProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = _bounds()
        self.url = b""
        #: Between a request's first byte and the end of its head.
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        #: The head or body timer, whichever phase the request is in.
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._closing = False

    # -- connections ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._bounds.max_clients and not self._close_an_idle_one():
            self._refuse(503, "too many connections")
            return
        _idle[self] = None
        self._arm(self._bounds.header_timeout, self._head_timed_out)

    def _close_an_idle_one(self) -> bool:
        for protocol in _idle:
            if protocol is not self:
                del _idle[protocol]
                protocol._closing = True
                protocol.transport.close()
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        _idle.pop(self, None)
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)
        cycle = self.cycle
        if cycle is not None and cycle.disconnected:
            _tell_gone(cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            _idle[self] = None

    # -- bytes in ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        _idle.pop(self, None)
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _Refused):
                self._refuse(error.__context__.status, error.__context__.text)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # httptools keeps an unfinished header to itself: its size is known only here.
        if self._in_head:
            if len(self.url) > self._bounds.max_request_line:
                self._refuse(414, "request line too long")
            elif self._head_bytes > self._bounds.max_request_line + self._bounds.max_header_bytes:
                self._refuse(431, "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_bytes = self._header_count = 0
        if self._timer is None:
            self._arm(self._bounds.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._bounds.max_request_line:
            raise _Refused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer: dropped, never merged into the request's head.
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self._bounds.max_headers:
            raise _Refused(431, "too many header fields")
        if self._header_bytes > self._bounds.max_header_bytes:
            raise _Refused(431, "request head too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        target = self.url
        super().on_headers_complete()
        scope = cast(dict[str, Any], self.scope)
        # The scope is the request's own dict, read by its task once it starts.
        if not target.startswith(b"/"):
            scope[NOT_ORIGIN_FORM] = True
        scope[ON_CLIENT_GONE] = None
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and scope.get("http_version") == "1.0":
            cycle.__class__ = _CloseDelimitedCycle
        self._arm(self._bounds.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if not self._closing:
            self._arm(self._bounds.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    # -- timers -----------------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._head_bytes or self.url:
            self._refuse(408, "request head timed out")
        else:
            self._refuse(None, "")

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.flow.read_paused:
            # The app is not reading the body yet: the client is not the one waiting.
            self._arm(self._bounds.body_timeout, self._body_timed_out)
            return
        self._refuse(408, "request body timed out")

    # -- bytes out --------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self._bounds.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        # The client read nothing for the send timeout: dropped with what it did not
        # read. Its request sees the disconnect and leaves its flight.
        self._send_timer = None
        self._closing = True
        _idle.pop(self, None)
        self.transport.abort()

    # -- refusing ---------------------------------------------------------------------

    def _refuse(self, status: int | None, text: str) -> None:
        """Answer *status* (unless a response is under way, or None) and close."""
        self._closing = True
        _idle.pop(self, None)
        self._disarm()
        cycle = self.cycle
        if status is not None and (cycle is None or cycle.response_complete or not cycle.response_started):
            self.transport.write(_error(status, text))
        if cycle is not None and not cycle.response_complete:
            # The request's task sees its client gone now, and writes nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
            _tell_gone(cycle)
        self.transport.close()


def _tell_gone(cycle: RequestResponseCycle) -> None:
    """Call the app's ON_CLIENT_GONE callable, if it left one in its request's scope."""
    callback = cast(dict[str, Any], cycle.scope).get(ON_CLIENT_GONE)
    if callback is not None:
        callback()
