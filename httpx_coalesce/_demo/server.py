"""Run an ASGI app with uvicorn on 127.0.0.1 in a background thread.

The server owns its own event loop in its own thread, so it can be started from plain synchronous code as
well as from inside a running asyncio or trio loop without interfering with that loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import cast

import uvicorn
from starlette.types import ASGIApp

__all__ = ["LocalServer"]

# How often start() re-checks whether uvicorn has finished binding; small because tests start many servers.
_STARTUP_POLL_SECONDS = 0.005


class LocalServer:
    """A uvicorn server for ``app`` bound to a free local port, running in a daemon thread.

    Use as a context manager::

        with LocalServer(api.app) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")

    ``graceful_timeout`` bounds how long stopping waits for responses still in flight (for example a stream
    held by a gate that was never opened) before uvicorn cancels them; idle keep-alive connections are closed
    at once. ``on_stop`` is called first thing when stopping, e.g. ``FakeLLMAPI.close`` to end such responses
    right away instead of having them cancelled (which uvicorn logs as errors).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        graceful_timeout: float = 0.5,
        startup_timeout: float = 10.0,
        on_stop: Callable[[], object] | None = None,
    ) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._log_level = log_level
        self._graceful_timeout = graceful_timeout
        self._startup_timeout = startup_timeout
        self._on_stop = on_stop
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalServer:
        if self._thread is not None:
            raise RuntimeError("LocalServer already started")
        config = uvicorn.Config(
            self._app,
            host=self._host,
            port=self._requested_port,
            log_level=self._log_level,
            # No log_config: uvicorn would otherwise run logging.dictConfig and rewire global handlers every
            # time a test starts a server; its loggers still propagate to the root logger.
            log_config=None,
            access_log=False,
            lifespan="off",
            # Annotated int in uvicorn, but it only ever reaches asyncio.wait_for, which takes fractions too.
            timeout_graceful_shutdown=cast(int, max(self._graceful_timeout, 0.0)),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, name=f"httpx-coalesce-demo-server-{id(self):x}", daemon=True
        )
        self._server = server
        self._thread = thread
        thread.start()

        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive():
                # uvicorn reports bind failures by logging and calling sys.exit() inside the thread.
                self._server = None
                self._thread = None
                raise RuntimeError(f"uvicorn failed to start on {self._host}:{self._requested_port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {self._startup_timeout} s")
            time.sleep(_STARTUP_POLL_SECONDS)

        # With port=0 the kernel picked the port; the listening socket is the only place that knows it.
        sockets = server.servers[0].sockets
        self._port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        try:
            if self._on_stop is not None:
                self._on_stop()
        finally:
            server.should_exit = True
        # uvicorn notices should_exit on its 0.1 s tick, then spends 0.1 s plus at most the graceful timeout.
        thread.join(timeout=self._graceful_timeout + 2.0)
        if thread.is_alive():
            # Skip waiting for connections altogether; asyncio.run then cancels whatever is still running.
            server.force_exit = True
            thread.join(timeout=2.0)
        self._server = None
        self._thread = None
        self._port = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "stopped"
        return f"<LocalServer {where}>"
