"""Backends: where a flight's leader gets its response from.

In one process the local flight table is all there is, and the leader sends its
request upstream itself (no backend). A backend sits between the local leader and the
upstream: it may send the request (when this process leads fleet-wide) or hand back a
response that another process is fetching. Either way the local flight fans it out.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ._library import Library
from ._limits import Limits
from ._stats import Counters

__all__ = ["AsyncSend", "Backend", "SyncSend", "bind_backend"]

#: Sends a request upstream and returns the client library's Response (stream unread).
AsyncSend = Callable[[Any], Awaitable[Any]]
SyncSend = Callable[[Any], Any]


@runtime_checkable
class Backend(Protocol):
    def bind(self, counters: Counters, limits: Limits) -> None:
        """Called once by the transport: where to count, and the limits to keep.

        A backend that can keep finished responses for the whole fleet takes a
        ``window`` keyword too (seconds, the transport's ``window``); the transport
        passes it only to a ``bind`` that has it, and only when the window is on.
        """

    async def send_async(self, key: str, request: Any, library: Library, send: AsyncSend) -> Any:
        """The response for *request* (key *key*), sent with *send* or fetched elsewhere.

        Must fall back to ``await send(request)`` on any trouble of its own.
        """

    def send_sync(self, key: str, request: Any, library: Library, send: SyncSend) -> Any:
        """As :meth:`send_async`, for threads."""

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


def bind_backend(backend: Backend, counters: Counters, limits: Limits, window: float) -> None:
    """Bind *backend* to a transport, with the window if it keeps one fleet-wide."""
    if window > 0 and "window" in inspect.signature(backend.bind).parameters:
        backend.bind(counters, limits, window=window)  # type: ignore[call-arg]
    else:
        backend.bind(counters, limits)
