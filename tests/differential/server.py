"""The loopback server both runs of a differential scenario talk to.

Built on the hand-written loopback server of the reliability suite, so that it answers
byte for byte the same way every time (no ``date`` header, no random boundary) and can
misbehave on purpose: hold the head, send the head and then hold the body, close the
connection part-way through a body, answer with a redirect or a cookie.

What a request asks for is in its query string; gates are named there by id, so two
runs of one scenario make the same request but wait on gates of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import parse_qs, urlencode

import orjson

from ..reliability.loopback import LoopbackServer, RawRequest

__all__ = ["FIRST_PART", "DifferentialServer", "Gate"]

#: With the body held, the server sends the head and this many body bytes first.
FIRST_PART = 1024
#: Chunk size of chunked and event-stream bodies.
CHUNK = 4096


class Gate:
    """Something the server waits at until the test opens it."""

    def __init__(self, gate_id: str) -> None:
        self.id = gate_id
        self.opened = threading.Event()
        #: Set when a request reached this gate.
        self.arrived = threading.Event()

    def open(self) -> None:
        self.opened.set()

    async def passed(self) -> None:
        # The server's loop polls a thread event: the test side may be any runtime.
        while not self.opened.is_set():
            await asyncio.sleep(0.002)


class DifferentialServer:
    def __init__(self) -> None:
        self._gates: dict[str, Gate] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._loopback = LoopbackServer(self._handle)

    def __enter__(self) -> DifferentialServer:
        self._loopback.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.open_all()
        self._loopback.__exit__(exc_type, exc_value, traceback)

    @property
    def url(self) -> str:
        return self._loopback.url

    def gate(self) -> Gate:
        with self._lock:
            gate = Gate(str(next(self._ids)))
            self._gates[gate.id] = gate
        return gate

    def open_all(self) -> None:
        """Let every held answer go (a failed test must leave nothing waiting)."""
        with self._lock:
            gates, self._gates = list(self._gates.values()), {}
        for gate in gates:
            gate.open()

    @staticmethod
    def query(
        *,
        size: int = 0,
        mode: str = "length",
        cut: int | None = None,
        cookie: bool = False,
        head_gate: Gate | None = None,
        body_gate: Gate | None = None,
    ) -> str:
        """The query string asking for an answer; see ``_handle``."""
        fields: dict[str, str] = {"size": str(size), "mode": mode}
        if cut is not None:
            fields["cut"] = str(cut)
        if cookie:
            fields["cookie"] = "1"
        if head_gate is not None:
            fields["head_gate"] = head_gate.id
        if body_gate is not None:
            fields["body_gate"] = body_gate.id
        return urlencode(fields)

    async def _handle(
        self, request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """``/redirect``: a 307 to ``/echo`` with the same query. ``/echo``: a document
        describing the request (never the gate ids, so both runs get the same bytes),
        padded to ``size``, sent with a length, chunked or as an event stream (``mode``);
        ``head_gate`` holds the whole answer, ``body_gate`` all but the head and a first
        part; ``cut`` closes the connection after that many body bytes; ``cookie`` adds a
        ``Set-Cookie``."""
        if request.path == "/redirect":
            writer.write(
                b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /echo?%s\r\ncontent-length: 0\r\n\r\n"
                % request.query.encode()
            )
            await writer.drain()
            return True
        query = {name: values[0] for name, values in parse_qs(request.query).items()}
        head_gate = self._gates.get(query.get("head_gate", ""))
        if head_gate is not None:
            head_gate.arrived.set()
            await head_gate.passed()
        mode = query.get("mode", "length")
        body = _body(request, mode, int(query.get("size", "0")))
        cut = int(query["cut"]) if "cut" in query else None
        head = [b"HTTP/1.1 200 OK", b"x-served-by: differential"]
        if mode == "sse":
            head.append(b"content-type: text/event-stream")
        else:
            head.append(b"content-type: application/json")
        if mode == "length":
            head.append(b"content-length: %d" % len(body))
        else:
            head.append(b"transfer-encoding: chunked")
        if "cookie" in query:
            head.append(b"set-cookie: session=s3cret; Path=/")
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        body_gate = self._gates.get(query.get("body_gate", ""))
        sent = 0
        for part in _parts(body, mode, first=FIRST_PART if body_gate is not None else None):
            if cut is not None and sent + len(part) >= cut:
                part = part[: cut - sent]
                writer.write(_framed(part, mode))
                await writer.drain()
                # The peer closes in the middle of the body: the client sees it end early.
                return False
            writer.write(_framed(part, mode))
            sent += len(part)
            if body_gate is not None and sent == FIRST_PART:
                await writer.drain()
                body_gate.arrived.set()
                await body_gate.passed()
        if mode != "length":
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _body(request: RawRequest, mode: str, size: int) -> bytes:
    document = orjson.dumps(
        {
            "method": request.method,
            "path": request.path,
            "body_sha": hashlib.sha256(request.body).hexdigest(),
            "body_length": len(request.body),
            "content_type": request.headers.get("content-type", b"").decode("latin-1"),
        }
    )
    if mode == "sse":
        events = [b"data: " + document + b"\n\n"]
        total = len(events[0])
        for number in itertools.count():
            if total >= size:
                break
            event = b"data: %d\n\n" % number
            events.append(event)
            total += len(event)
        return b"".join(events)
    return document + b" " * max(0, size - len(document))


def _parts(body: bytes, mode: str, first: int | None) -> Iterator[bytes]:
    start = 0
    if first is not None and len(body) > first:
        yield body[:first]
        start = first
    step = CHUNK if mode != "length" else max(len(body), 1)
    for offset in range(start, len(body), step):
        yield body[offset : offset + step]


def _framed(part: bytes, mode: str) -> bytes:
    if mode == "length" or not part:
        return part
    return b"%x\r\n%s\r\n" % (len(part), part)
