"""The floor: the least any transport that keeps the issue's promises must do per request.

A yardstick for the overhead targets, run side by side with the bare client and with
ours. It does what the issue requires of every request that may coalesce, and nothing
else:

* a key: every header and the JSON body canonicalised (orjson, sorted keys), hashed
  with blake2b;
* the upstream call run apart from the caller, in a task of its own, so that a caller
  cancelled does not cancel it for the others;
* each caller its own Response over the one shared body.

No limits, counters, credential rules, live streams, cancellation of unwanted calls,
errors shared as fresh exceptions, or window. Nobody should use it: its cost is the
one no real implementation can go under, so a target below it cannot be met by any
design, ours or another.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from typing import Any

import orjson

__all__ = ["FloorTransport"]

_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class FloorTransport:
    """Coalesces identical requests with the bare minimum (see the module's text)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._flights: dict[str, asyncio.Future[_Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: Any) -> Any:
        headers = sorted(b"%s:%s" % (name.lower(), value) for name, value in request.headers.raw)
        head = b"%s %s\0%s\0" % (request.method.encode(), str(request.url).encode(), b"\n".join(headers))
        digest = hashlib.blake2b(head)
        digest.update(orjson.dumps(orjson.loads(request.content), option=orjson.OPT_SORT_KEYS))
        key = digest.hexdigest()
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = self._flights[key] = loop.create_future()
            task = loop.create_task(self._call(key, request, flight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        status, raw_headers, body = await flight
        library = sys.modules[type(request).__module__.partition(".")[0]]
        return library.Response(status, headers=raw_headers, stream=library.ByteStream(body), request=request)

    async def _call(self, key: str, request: Any, flight: asyncio.Future[_Answer]) -> None:
        try:
            response = await self._inner.handle_async_request(request)
            flight.set_result((response.status_code, response.headers.raw, await response.aread()))
        except Exception as error:
            flight.set_exception(error)
        finally:
            del self._flights[key]

    async def aclose(self) -> None:
        await self._inner.aclose()
