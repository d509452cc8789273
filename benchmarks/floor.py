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

Run alone (``python -m benchmarks.floor``), it measures ours against it in process, in
alternating rounds of one run: unique keys one at a time, and 10,000 identical callers
at once (where each caller alone, to an upstream answering at once, is what a follower
is measured against).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
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


# -- ours against the floor, side by side ------------------------------------------------

_URL = "http://upstream.bench/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}


async def _timed(job: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await job()
    return time.perf_counter() - start


async def unique_rounds(library: ModuleType, requests: int, rounds: int) -> dict[str, list[float]]:
    """Unique 1 KB JSON keys one at a time: the bare client, the floor and ours, in
    alternating rounds; wall seconds per round by contender."""
    from httpx_coalesce import CoalescingTransport

    from .inprocess import InProcessUpstream
    from .rounds import alternate
    from .workloads import chat_payload

    clients = {
        "bare": library.AsyncClient(transport=InProcessUpstream(library)),
        "floor": library.AsyncClient(transport=FloorTransport(InProcessUpstream(library))),
        "ours": library.AsyncClient(transport=CoalescingTransport(InProcessUpstream(library))),
    }
    counter = iter(range(1 << 30))

    def bodies(count: int) -> list[bytes]:
        tag = next(counter)
        return [orjson.dumps(chat_payload(f"floor-{tag}-{i}", 1024)) for i in range(count)]

    async def one(name: str) -> float:
        client, sent = clients[name], bodies(requests)

        async def job() -> None:
            for body in sent:
                await client.post(_URL, content=body, headers=_HEADERS)

        return await _timed(job)

    try:
        for name in clients:  # warm: first-call costs are not per-request costs
            await one(name)
        return await alternate(list(clients), rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()


async def stampede_rounds(
    library: ModuleType, callers: int, rounds: int, delay: float = 0.005
) -> dict[str, list[float]]:
    """*callers* identical requests at once: ours and the floor (one upstream call,
    answering after *delay*) and the bare client to an upstream answering at once (each
    caller's own request: what a follower is measured against)."""
    from httpx_coalesce import CoalescingTransport

    from .inprocess import InProcessUpstream
    from .rounds import alternate
    from .workloads import chat_payload

    body = orjson.dumps(chat_payload("floor-stampede", 1024))
    upstreams = {
        "instant": InProcessUpstream(library),
        "floor": InProcessUpstream(library, delay=delay),
        "ours": InProcessUpstream(library, delay=delay),
    }
    clients = {
        "instant": library.AsyncClient(transport=upstreams["instant"]),
        "floor": library.AsyncClient(transport=FloorTransport(upstreams["floor"])),
        "ours": library.AsyncClient(transport=CoalescingTransport(upstreams["ours"])),
    }

    async def one(name: str, count: int = callers) -> float:
        client, hits = clients[name], upstreams[name].hits

        async def job() -> None:
            await asyncio.gather(*(client.post(_URL, content=body, headers=_HEADERS) for _ in range(count)))

        seconds = await _timed(job)
        if name != "instant" and upstreams[name].hits - hits != 1:
            raise RuntimeError(f"{name}: {upstreams[name].hits - hits} upstream calls, not 1")
        return seconds

    try:
        for name in clients:
            await one(name, 100)
        return await alternate(list(clients), rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()


def _ratio(runs: dict[str, list[float]], top: str, bottom: str) -> str:
    from .stats import ratios

    found = ratios(runs[top], runs[bottom])
    return f"{found.median:.3f}x ({found.low:.3f}-{found.high:.3f})"


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.floor``: ours against the floor, in process, same run."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--library", default="httpx", choices=["httpx", "httpx2"])
    parser.add_argument("--requests", type=int, default=1000, help="unique keys per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--callers", type=int, default=10_000)
    parser.add_argument("--stampede-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    library = importlib.import_module(args.library)
    unique = asyncio.run(unique_rounds(library, args.requests, args.rounds))
    print(
        f"{library.__name__}, unique keys one at a time ({args.requests:,} per round, {args.rounds} rounds):"
    )
    print(f"  ours / floor   {_ratio(unique, 'ours', 'floor')}")
    print(f"  floor / bare   {_ratio(unique, 'floor', 'bare')}")
    print(f"  ours / bare    {_ratio(unique, 'ours', 'bare')}")
    stampede = asyncio.run(stampede_rounds(library, args.callers, args.stampede_rounds))
    print(f"{library.__name__}, {args.callers:,} identical callers at once ({args.stampede_rounds} rounds):")
    print(f"  ours / floor   {_ratio(stampede, 'ours', 'floor')}")
    print(f"  floor / each caller alone (instant upstream)   {_ratio(stampede, 'floor', 'instant')}")
    print(f"  ours / each caller alone: a follower's cost     {_ratio(stampede, 'ours', 'instant')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
