"""The storm's upstream: echoes who asked what, counts hits per request, holds at a gate.

Every answer names the request it answers (method, target, a hash of the credentials
and of the body), so a caller can check the bytes it got were meant for it. Answers
wait at the gate (for requests asking ``gate=1``) until the test opens it, then after
a small delay drawn from the seed and the request, so runs are reproducible.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections import Counter
from urllib.parse import parse_qs

from .loopback import LoopbackServer, RawRequest, send_response

__all__ = ["EchoUpstream", "HitKey", "echo_line"]

#: What the server counts hits by: one distinct request.
HitKey = tuple[str, str, str, str]


def echo_line(method: str, target: str, authorization: bytes, body: bytes) -> bytes:
    """One line of the answer to a request; the body is this line ``chunks`` times."""
    auth = hashlib.sha256(authorization).hexdigest()[:16]
    digest = hashlib.sha256(body).hexdigest()[:16]
    return f"{method} {target} auth={auth} body={digest}\n".encode()


class EchoUpstream:
    """Query parameters: ``gate=1`` waits for the gate; ``chunks=N`` repeats the line N
    times; ``shape=buffered|chunked|sse`` sends it with a content-length, chunked, or as
    an event stream (both live to the transport), one line per write."""

    def __init__(self, seed: int, max_delay: float = 0.003) -> None:
        self.seed = seed
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self.hits: Counter[HitKey] = Counter()
        self.server = LoopbackServer(self._handle)
        # Bound to the server's loop on first use; set and cleared only from that loop.
        self._gate = asyncio.Event()

    def __enter__(self) -> EchoUpstream:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(None, None, None)

    @property
    def url(self) -> str:
        return self.server.url

    def close_gate(self) -> None:
        self.server.loop.call_soon_threadsafe(self._gate.clear)

    def open_gate(self) -> None:
        self.server.loop.call_soon_threadsafe(self._gate.set)

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()

    def hits_of(self, method: str, target: str, authorization: bytes, body: bytes) -> int:
        with self._lock:
            return self.hits[_hit_key(method, target, authorization, body)]

    async def _handle(
        self, request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        authorization = request.headers.get("authorization", b"")
        with self._lock:
            self.hits[_hit_key(request.method, request.target, authorization, request.body)] += 1
        query = {name: values[0] for name, values in parse_qs(request.query).items()}
        if query.get("gate") == "1":
            await self._gate.wait()
        delay = random.Random(f"{self.seed}:{request.target}").uniform(0, self.max_delay)
        if delay:
            await asyncio.sleep(delay)
        line = echo_line(request.method, request.target, authorization, request.body)
        chunks = int(query.get("chunks", "1"))
        shape = query.get("shape", "buffered")
        if shape == "buffered":
            send_response(writer, line * chunks, content_type=b"text/plain")
            await writer.drain()
            return True
        content_type = b"text/event-stream" if shape == "sse" else b"text/plain"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n" % content_type
        )
        for _ in range(chunks):
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _hit_key(method: str, target: str, authorization: bytes, body: bytes) -> HitKey:
    return (method, target, authorization.decode("latin-1"), hashlib.sha256(body).hexdigest())
