"""Faults a test injects between its backends and a redis-server it started.

``FaultProxy`` is a small TCP proxy: backends connect to it instead of to Redis, and
the test resets their connections, blackholes them (bytes are held, not forwarded, as
on a cut network), or delays every forwarded piece. ``restart`` SIGKILLs a private
redis-server and starts a new one on the same port, with nothing kept (no
persistence): every lease and stream is gone.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

from ..support.redis_server import RedisServer

__all__ = ["FaultProxy", "restart"]


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to *target_port*, with faults on command."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        #: Set while traffic flows; cleared to blackhole it.
        self._flowing = threading.Event()
        self._flowing.set()
        self.delay = 0.0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self) -> None:
        """Hold every byte, both ways, until :meth:`heal` (connections stay open)."""
        self._flowing.clear()

    def heal(self) -> None:
        self.delay = 0.0
        self._flowing.set()

    def reset(self) -> None:
        """Reset every open connection (RST): as a restarted proxy or NAT would."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def restart(server: RedisServer, start: Callable[[int], RedisServer]) -> RedisServer:
    """SIGKILL *server* and start an empty one on its port with *start* (the
    ``redis_server`` fixture), as after a crash with no persistence."""
    server.kill()
    return start(server.port)
