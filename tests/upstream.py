"""A real HTTP server on loopback that the integration tests coalesce against.

It counts its hits, can hold answers behind a gate (so tests make requests overlap by
waiting on conditions, never on timing), and misbehaves on demand.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


class Upstream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        #: Answers wait here while it is clear; tests set it once every caller has joined.
        self.gate = threading.Event()
        self.gate.set()
        #: Set when a request reached the server (and is held at the gate, if closed).
        self.arrived = threading.Event()
        #: Set once a stream (with ``hold=K``) sent K events and waits for the gate.
        self.holding = threading.Event()
        self.disconnects = 0
        self.streams_closed = 0
        self.app = Starlette(
            routes=[
                Route("/echo", self.echo, methods=["GET", "POST", "HEAD", "PUT"]),
                Route("/gzip", self.gzipped),
                Route("/empty", self.empty, methods=["GET", "POST"]),
                Route("/status/{code:int}", self.status, methods=["GET", "POST"]),
                Route("/reset", self.reset, methods=["GET", "POST"]),
                Route("/slow", self.slow, methods=["GET", "POST"]),
                Route("/sse", self.sse, methods=["GET", "POST"]),
                Route("/big", self.big, methods=["GET", "POST"]),
                Route("/trickle", self.trickle, methods=["GET", "POST"]),
                Route("/headers", self.headers, methods=["GET", "POST"]),
            ]
        )

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def hold(self) -> None:
        self.gate.clear()
        self.arrived.clear()
        self.holding.clear()

    def reset_state(self) -> None:
        with self._lock:
            self.hits.clear()
            self.disconnects = 0
            self.streams_closed = 0
        self.gate.set()
        self.arrived.clear()
        self.holding.clear()

    async def _enter(self, request: Request, gated: bool = True) -> None:
        with self._lock:
            self.hits[request.url.path] += 1
        self.arrived.set()
        while gated and not self.gate.is_set():
            if await request.is_disconnected():
                with self._lock:
                    self.disconnects += 1
                raise anyio.get_cancelled_exc_class()
            await anyio.sleep(0.002)

    async def echo(self, request: Request) -> Response:
        body = await request.body()
        await self._enter(request)
        auth = request.headers.get("authorization", "")
        document = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body_sha": hashlib.sha256(body).hexdigest(),
            "auth_sha": hashlib.sha256(auth.encode()).hexdigest(),
            "hit": self.total,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        return Response(orjson.dumps(document), media_type="application/json")

    async def gzipped(self, request: Request) -> Response:
        await self._enter(request)
        payload = b"coalesced and compressed " * 200
        return Response(gzip.compress(payload), headers={"content-encoding": "gzip"}, media_type="text/plain")

    async def empty(self, request: Request) -> Response:
        await self._enter(request)
        return Response(status_code=204)

    async def headers(self, request: Request) -> Response:
        """A small answer with the response headers named in its query (``?set-cookie=a=1``)."""
        await self._enter(request)
        headers = dict(request.query_params)
        return Response(orjson.dumps({"hit": self.total}), headers=headers, media_type="application/json")

    async def status(self, request: Request) -> Response:
        await self._enter(request)
        code = request.path_params["code"]
        return Response(orjson.dumps({"error": code}), status_code=code, media_type="application/json")

    async def reset(self, request: Request) -> Response:
        await self._enter(request)

        async def partial_then_die() -> AsyncIterator[bytes]:
            yield b"partial body "
            raise RuntimeError("connection reset mid-body")

        return StreamingResponse(partial_then_die(), media_type="text/plain")

    async def slow(self, request: Request) -> Response:
        await self._enter(request)
        await anyio.sleep(float(request.query_params.get("seconds", "5")))
        return Response(b"too late", media_type="text/plain")

    async def big(self, request: Request) -> Response:
        await self._enter(request)
        size = int(request.query_params.get("size", "1000000"))
        return Response(b"x" * size, media_type="application/octet-stream")

    async def trickle(self, request: Request) -> Response:
        """A body of known length (``parts`` x ``size`` bytes), one part every ``gap``
        seconds: longer in all than a read timeout that each part alone stays within.
        With ``hold=K`` it sends K parts, then waits for the gate."""
        hold = int(request.query_params.get("hold", "0"))
        await self._enter(request, gated=hold == 0)
        parts = int(request.query_params.get("parts", "5"))
        size = int(request.query_params.get("size", "8192"))
        gap = float(request.query_params.get("gap", "0.1"))

        async def body() -> AsyncIterator[bytes]:
            for number in range(parts):
                if number == hold and hold:
                    self.holding.set()
                    while not self.gate.is_set():
                        await anyio.sleep(0.002)
                elif number:
                    await anyio.sleep(gap)
                yield bytes([65 + number]) * size

        return StreamingResponse(
            body(), media_type="application/octet-stream", headers={"content-length": str(parts * size)}
        )

    async def sse(self, request: Request) -> Response:
        """``events`` events, then ``[DONE]``. With ``hold=K`` it sends K events, then
        waits for the gate; with ``fail=K`` it breaks the connection after K events."""
        hold = int(request.query_params.get("hold", "0"))
        fail = int(request.query_params.get("fail", "-1"))
        await self._enter(request, gated=hold == 0)
        count = int(request.query_params.get("events", "10"))
        pad = b"x" * int(request.query_params.get("pad", "0"))

        async def events() -> AsyncIterator[bytes]:
            try:
                for number in range(count):
                    if number == fail:
                        raise RuntimeError("connection reset mid-stream")
                    if number == hold:
                        self.holding.set()
                        while not self.gate.is_set():
                            await anyio.sleep(0.002)
                    yield b"data: " + orjson.dumps({"n": number}) + pad + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                with self._lock:
                    self.streams_closed += 1

        return StreamingResponse(events(), media_type="text/event-stream")
