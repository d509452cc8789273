"""A hand-written HTTP/1.1 server on 127.0.0.1, on asyncio streams, in a thread of its own.

No HTTP library serves malformed HTTP, resets a connection mid-body or lies about a
content length on purpose; this one does whatever its handler writes on the socket.
It also serves the storm, well-formed and cheap: thousands of requests a second with
none of a framework's per-request cost.

The server owns its event loop in its own thread, so tests on asyncio, trio or plain
threads use it alike.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Handler", "LoopbackServer", "RawRequest", "reset", "send_response"]


@dataclass(frozen=True, slots=True)
class RawRequest:
    method: str
    target: str
    #: Header names lower-cased; values as bytes, as sent.
    headers: dict[str, bytes]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


#: Answers one request by writing on the socket; returns whether to keep the connection.
Handler = Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class LoopbackServer:
    def __init__(self, handler: Handler, port: int = 0) -> None:
        self._handler = handler
        self._requested_port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def __enter__(self) -> LoopbackServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, "127.0.0.1", self._requested_port, backlog=4096, reuse_address=True
        )
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Connections still open (a never-ending stream) are cancelled, not awaited.
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None or not await self._handler(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # The server is stopping: a connection still open ends here, quietly.
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers: dict[str, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.strip()
    if headers.get("transfer-encoding", b"").lower() == b"chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", b"0")))
    return RawRequest(method, target, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def send_response(
    writer: asyncio.StreamWriter,
    body: bytes,
    *,
    status: int = 200,
    content_type: bytes = b"application/json",
    extra: bytes = b"",
) -> None:
    writer.write(
        b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s"
        % (status, content_type, len(body), extra, body)
    )


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), not a FIN: what a crashed peer looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
