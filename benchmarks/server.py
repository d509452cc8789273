"""The loopback upstream every loopback workload talks to, run in a process of its own.

A uvicorn server in a thread of the benchmark process would compete with the client
for the GIL, so the client's CPU time and wall time would include the server's. It
runs in a child process instead (``python -m benchmarks.server``), and is asked over
HTTP how many upstream hits it has counted.

The app is a bare ASGI callable rather than the project's ``_demo.fake_api``: the
workloads need things fake_api does not offer (a latency per request, a 1 MB body,
a 1,000-event stream whose events carry the server's send time), and a bare app keeps
the server's own CPU, which shares the machine's two cores with the client, small.

Endpoints (all POST ones count a hit; ``latency`` in seconds, before the answer):

``POST /v1/chat/completions?latency=S``
    an OpenAI-shaped chat completion derived from the request body.
``POST /v1/blob?size=B&latency=S``
    a JSON document of exactly ``B`` bytes (an embeddings-like list of floats).
``POST /v1/stream?events=E&size=B&gap=S&latency=S``
    a ``text/event-stream``: headers at once, then after ``latency`` ``E`` events of
    about ``B`` bytes ``gap`` apart, each stamped (``"t"``) with the server's
    ``time.time()`` just before it was handed to the connection.
``GET /_bench/hits``
    ``{"hits": N}``, not counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import orjson

__all__ = ["BenchServer", "app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_hits = 0
_blobs: dict[int, bytes] = {}


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {name: values[-1] for name, values in parsed.items()}


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_whole(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _completion(body: bytes, hit: int) -> bytes:
    # Identical requests get identical content, as from a deterministic model; the id
    # carries the hit number so a caller can tell which upstream call served it.
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    return orjson.dumps(
        {
            "id": f"chatcmpl-bench{hit:08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Answer {digest}."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(body) // 4,
                "completion_tokens": 9,
                "total_tokens": len(body) // 4 + 9,
            },
        }
    )


def _blob(size: int) -> bytes:
    """A JSON document of exactly *size* bytes, built once per size."""
    blob = _blobs.get(size)
    if blob is None:
        floats = b",".join(b"%.6f" % ((i % 1000) / 1000.0) for i in range(size // 9 + 1))
        head = b'{"object":"list","data":[{"embedding":['
        tail = b']}],"pad":"'
        room = size - len(head) - len(tail) - 2
        floats = floats[:room].rsplit(b",", 1)[0]
        pad = size - len(head) - len(floats) - len(tail) - 2
        blob = head + floats + tail + b" " * pad + b'"}'
        assert len(blob) == size
        _blobs[size] = blob
    return blob


async def _stream(send: Send, events: int, size: int, gap: float, latency: float) -> None:
    # Headers at once, the first event after the latency: an LLM API answers 200 before
    # its first token, so callers hold their Response while they wait for data.
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if latency > 0:
        await asyncio.sleep(latency)
    pad = "x" * max(size - 60, 0)
    for index in range(events):
        if index and gap > 0:
            await asyncio.sleep(gap)
        # The stamp is taken last, just before the event is handed to the connection:
        # the client measures its lags from here.
        event = {"i": index, "last": index == events - 1, "pad": pad, "t": time.time()}
        body = b"data: " + orjson.dumps(event) + b"\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app (module level, so the spawned child can import it by name)."""
    global _hits
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/_bench/hits":
        await _send_whole(send, 200, b"application/json", orjson.dumps({"hits": _hits}))
        return
    query = _query(scope)
    body = await _read_body(receive)
    _hits += 1
    hit = _hits
    latency = float(query.get("latency", "0"))
    if path == "/v1/stream":
        events, size = int(query.get("events", "1000")), int(query.get("size", "1024"))
        await _stream(send, events, size, float(query.get("gap", "0")), latency)
        return
    if latency > 0:
        await asyncio.sleep(latency)
    if path == "/v1/chat/completions":
        await _send_whole(send, 200, b"application/json", _completion(body, hit))
    elif path == "/v1/blob":
        await _send_whole(send, 200, b"application/json", _blob(int(query.get("size", "1048576"))))
    else:
        await _send_whole(send, 404, b"text/plain", b"not found")


def serve() -> None:
    """The child process: bind, print the port, serve until terminated."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        # Keep idle connections between rounds: reconnecting is not what is measured.
        timeout_keep_alive=60,
    )
    uvicorn.Server(config).run(sockets=[sock])


def start_child(
    module_args: Sequence[str], startup_timeout: float, *, stdin: bool = False
) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m MODULE ARGS`` from the repository root; return it and the port it
    prints on its first line once it listens.

    A child started with ``-m``, not multiprocessing: spawn would re-import the parent's
    __main__, which breaks whenever that is a script without a guard.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        cwd=root,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], startup_timeout)
    line = process.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"{module_args[0]} did not start")
    return process, int(line)


class BenchServer:
    """The upstream in a spawned child process: ``with BenchServer() as server: server.url``."""

    def __init__(self, startup_timeout: float = 20.0) -> None:
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def hits(self) -> int:
        """Upstream hits counted so far, asked over a connection of its own.

        Raw asyncio streams rather than an httpx client: a client is tied to one event
        loop, and the workloads run in loops of their own.
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /_bench/hits HTTP/1.0\r\nhost: bench\r\n\r\n")
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
        return int(orjson.loads(answer.partition(b"\r\n\r\n")[2])["hits"])

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("BenchServer is not running")
        return self._port

    def start(self) -> BenchServer:
        process, port = start_child(["benchmarks.server"], self._startup_timeout)
        self._process = process
        self._port = port
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                asyncio.run(self.hits())
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        process = self._process
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._process = None
        self._port = None

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    serve()
