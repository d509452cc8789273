"""A raw-socket upstream that misbehaves on command, and raw clients for the gateway.

No HTTP library would write what an attacker's upstream writes (a 204 with a body,
bytes past the declared length, Content-Length beside chunked), so this one answers
with bytes written by hand. The request's path says which answer: ``/echo/TOKEN`` is
an honest answer carrying TOKEN; the others are listed in ``ANSWERS``. It records every
request as received (head, body, trailers) and when each of its connections ends, so
tests wait on states, not times.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

#: A whole second response, smuggled after the first: if the gateway reused the
#: connection, the next client sent on it would get this as its answer.
SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-type: text/plain\r\n\r\nstolen!"


def _answer(status: str, headers: list[str], body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status}\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode() + body


#: path -> the bytes written back.
ANSWERS = {
    "/204-with-bytes": _answer("204 No Content", [f"content-length: {len(SMUGGLED)}"], SMUGGLED),
    "/304-with-bytes": _answer("304 Not Modified", [f"content-length: {len(SMUGGLED)}"], SMUGGLED),
    "/head-with-body": _answer("200 OK", [f"content-length: {len(SMUGGLED)}"], SMUGGLED),
    "/bytes-past-length": _answer("200 OK", ["content-length: 2"], b"ok" + SMUGGLED),
    "/length-and-chunked": _answer(
        "200 OK", ["content-length: 3", "transfer-encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    ),
}


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)


class HostileUpstream:
    """Listens on a free loopback port; one thread per connection."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self.opened = 0
        self.closed = 0
        #: Paths with ``/held`` wait here before answering; tests set it once their
        #: clients are all in.
        self.gate = threading.Event()
        self.gate.set()
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._running = False
        self._server.close()

    def reset(self) -> None:
        self.gate.set()
        with self._lock:
            self.requests.clear()

    def seen(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def connections(self) -> tuple[int, int]:
        """(opened, closed by the gateway) so far."""
        with self._lock:
            return self.opened, self.closed

    def _accept(self) -> None:
        while self._running:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.opened += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            with sock:
                while True:
                    request, buffer = _read_request(sock, buffer)
                    if request is None:
                        return
                    with self._lock:
                        self.requests.append(request)
                    path = request.target.split("?", 1)[0]
                    # The route's base comes first (/base/echo/x): the name is what ends it.
                    answer = next((name for name in ANSWERS if path.endswith(name)), None)
                    if "/held" in path:
                        self.gate.wait(60)
                    if "/stream/" in path:
                        _stream(sock, int(path.rsplit("/stream/", 1)[1]))
                    elif "/echo/" in path:
                        token = path.rsplit("/echo/", 1)[1].encode()
                        sock.sendall(_answer("200 OK", [f"content-length: {len(token)}"], token))
                    elif answer is not None:
                        sock.sendall(ANSWERS[answer])
                    else:
                        sock.sendall(_answer("404 Not Found", ["content-length: 0"]))
        except OSError:
            pass
        finally:
            with self._lock:
                self.closed += 1


def _stream(sock: socket.socket, size: int) -> None:
    """*size* bytes in 64 KiB chunks, chunked: a body whose length is not announced."""
    sock.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    while size > 0:
        part = piece[:size]
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        size -= len(part)
    sock.sendall(b"0\r\n\r\n")


def _read_request(sock: socket.socket, buffer: bytes) -> tuple[Received | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    ]
    names = dict(headers)
    received = Received(method, target, headers, b"")
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            while len(buffer) < size + 2:
                buffer += sock.recv(65536)
            body, buffer = body + buffer[:size], buffer[size + 2 :]
        while b"\r\n" not in buffer:
            buffer += sock.recv(65536)
        while not buffer.startswith(b"\r\n"):
            line, buffer = buffer.split(b"\r\n", 1)
            name, _, value = line.decode("latin-1").partition(":")
            received.trailers.append((name.strip().lower(), value.strip()))
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
        received.body, buffer = body, buffer[2:]
    else:
        length = int(names.get("content-length", "0"))
        while len(buffer) < length:
            buffer += sock.recv(65536)
        received.body, buffer = buffer[:length], buffer[length:]
    return received, buffer


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])
