"""The two figures about our own cost, with their targets.

1. The path that does not coalesce: unique keys, 1 KB JSON bodies, one request at a
   time and a few at a time, through the same client with the bare inner transport and
   with ``CoalescingTransport`` around it. In process (an inner transport that answers
   at once: only client and transport costs are left) and against the loopback server
   (answering at once). Target ≤ 1.10x in process, ≤ 1.03x over loopback.
2. 10,000 concurrent identical requests through ``CoalescingTransport`` over an
   in-process transport that answers after a short delay: exactly one upstream call,
   and a wall time ≤ 1.3x that of 10,000 requests through the same kind of client to
   an in-process transport that answers at once.

Request bodies are prebuilt bytes (``content=``), so the client's JSON encoding, a
cost common to both sides, does not dilute the ratio.

Both figures also run ``FloorTransport`` (see ``floor``): the least any transport
keeping the issue's promises must do. Its ratio says whether a target can be met at
all by a coalescing transport in Python, whatever its design.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from httpx_coalesce import CoalescingTransport

from .floor import FloorTransport
from .inprocess import InProcessUpstream
from .rounds import alternate
from .stats import Spread, ratios, spread
from .workloads import chat_payload

__all__ = ["OverheadPlan", "libraries", "measure_overhead", "measure_stampede"]

_URL = "http://upstream.bench/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}

#: Targets, as the project states them.
TARGET_IN_PROCESS = 1.10
TARGET_LOOPBACK = 1.03
TARGET_STAMPEDE = 1.3


@dataclass(frozen=True)
class OverheadPlan:
    requests: int  # per contender per round, in process
    loopback_requests: int  # per contender per round, over loopback
    concurrency: int
    rounds: int
    stampede: int  # concurrent identical requests
    stampede_rounds: int
    stampede_delay: float


def plan(quick: bool) -> OverheadPlan:
    if quick:
        return OverheadPlan(200, 60, 16, 2, 1000, 2, 0.005)
    return OverheadPlan(2000, 300, 16, 5, 10_000, 3, 0.005)


def libraries() -> list[ModuleType]:
    found = [importlib.import_module("httpx")]
    with contextlib.suppress(ImportError):  # httpx2 is optional (Python 3.11+)
        found.append(importlib.import_module("httpx2"))
    return found


@dataclass
class _Timing:
    wall: float
    cpu: float
    upstream: int


async def _timed(job: Callable[[], Awaitable[int]]) -> _Timing:
    cpu = time.process_time()
    start = time.perf_counter()
    upstream = await job()
    return _Timing(time.perf_counter() - start, time.process_time() - cpu, upstream)


def _bodies(count: int, tag: str) -> list[bytes]:
    return [orjson.dumps(chat_payload(f"{tag}-{i}", 1024)) for i in range(count)]


async def _send_all(client: Any, url: str, bodies: list[bytes], concurrency: int) -> None:
    """Post every body, *concurrency* workers each sending its share one at a time."""

    async def worker(share: list[bytes]) -> None:
        for body in share:
            response = await client.post(url, content=body, headers=_HEADERS)
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered {response.status_code}")

    await asyncio.gather(*(worker(bodies[i::concurrency]) for i in range(concurrency)))


def _figure(base: list[_Timing], ours: list[_Timing], target: float, requests: int) -> dict[str, Any]:
    wall = ratios([t.wall for t in ours], [t.wall for t in base])
    cpu = ratios([t.cpu for t in ours], [t.cpu for t in base])
    per_request_base = spread([t.wall / requests * 1e6 for t in base])
    per_request_ours = spread([t.wall / requests * 1e6 for t in ours])
    return {
        "wall_ratio": wall.as_dict(),
        "cpu_ratio": cpu.as_dict(),
        "added_us_per_request": per_request_ours.median - per_request_base.median,
        "base_us_per_request": per_request_base.median,
        "target": target,
        "met": wall.median <= target,
        "requests_per_round": requests,
        "rounds": wall.n,
    }


async def _overhead_pair(
    make_base: Callable[[], Any],
    make_ours: Callable[[], tuple[Any, CoalescingTransport]],
    url: str,
    requests: int,
    concurrency: int,
    rounds: int,
    target: float,
    make_floor: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    base = make_base()
    ours, transport = make_ours()
    clients = {"base": base, "ours": ours}
    if make_floor is not None:
        clients["floor"] = make_floor()
    try:
        # Warm both: connections, lazily built classes, first-call caches.
        for client in clients.values():
            await _send_all(client, url, _bodies(min(requests, 50), "warm"), concurrency)
        counter = iter(range(1 << 30))

        async def one(name: str) -> _Timing:
            bodies = _bodies(requests, f"{name}-{next(counter)}")

            async def job() -> int:
                await _send_all(clients[name], url, bodies, concurrency)
                return requests

            return await _timed(job)

        before = transport.stats()
        runs = await alternate(list(clients), rounds, one)
        after = transport.stats()
    finally:
        for client in clients.values():
            await client.aclose()
    figure = _figure(runs["base"], runs["ours"], target, requests)
    if "floor" in runs:
        floor = ratios([t.wall for t in runs["floor"]], [t.wall for t in runs["base"]])
        figure["floor_wall_ratio"] = floor.as_dict()
    # Unique keys: nothing may have been shared, or the figure measures something else.
    figure["coalesced"] = after.coalesced - before.coalesced
    return figure


async def measure_overhead(plan: OverheadPlan, loopback_url: str | None) -> dict[str, Any]:
    """Figure 1, for each library, in process and (given a server) over loopback."""
    results: dict[str, Any] = {}
    for lib in libraries():
        for mode, concurrency in (("sequential", 1), ("concurrent", plan.concurrency)):

            def base(lib: ModuleType = lib) -> Any:
                return lib.AsyncClient(transport=InProcessUpstream(lib))

            def ours(lib: ModuleType = lib) -> tuple[Any, CoalescingTransport]:
                transport = CoalescingTransport(InProcessUpstream(lib))
                return lib.AsyncClient(transport=transport), transport

            def floor(lib: ModuleType = lib) -> Any:
                return lib.AsyncClient(transport=FloorTransport(InProcessUpstream(lib)))

            results[f"in-process/{lib.__name__}/{mode}"] = await _overhead_pair(
                base, ours, _URL, plan.requests, concurrency, plan.rounds, TARGET_IN_PROCESS, floor
            )
    if loopback_url is not None:
        # httpx only: the in-process figures already compare the libraries, and a
        # loopback request costs ten times an in-process one on this budget.
        lib = libraries()[0]
        url = loopback_url + "/v1/chat/completions?latency=0"
        for mode, concurrency in (("sequential", 1), ("concurrent", plan.concurrency)):

            def loop_base(lib: ModuleType = lib) -> Any:
                return lib.AsyncClient(timeout=60)

            def loop_ours(lib: ModuleType = lib) -> tuple[Any, CoalescingTransport]:
                transport = CoalescingTransport()
                return lib.AsyncClient(transport=transport, timeout=60), transport

            def loop_floor(lib: ModuleType = lib) -> Any:
                return lib.AsyncClient(transport=FloorTransport(lib.AsyncHTTPTransport()), timeout=60)

            results[f"loopback/{lib.__name__}/{mode}"] = await _overhead_pair(
                loop_base,
                loop_ours,
                url,
                plan.loopback_requests,
                concurrency,
                plan.rounds,
                TARGET_LOOPBACK,
                loop_floor,
            )
    return results


async def _stampede(client: Any, count: int, body: bytes) -> None:
    async def call() -> None:
        response = await client.post(_URL, content=body, headers=_HEADERS)
        if response.status_code != 200:
            raise RuntimeError(f"upstream answered {response.status_code}")

    await asyncio.gather(*(call() for _ in range(count)))


async def _stampede_figure(lib: ModuleType, plan: OverheadPlan, body: bytes) -> dict[str, Any]:
    instant = InProcessUpstream(lib)
    delayed = InProcessUpstream(lib, delay=plan.stampede_delay)
    floor_delayed = InProcessUpstream(lib, delay=plan.stampede_delay)
    clients = {
        "instant": lib.AsyncClient(transport=instant),
        "ours": lib.AsyncClient(transport=CoalescingTransport(delayed)),
        "floor": lib.AsyncClient(transport=FloorTransport(floor_delayed)),
    }
    upstream = {"instant": instant, "ours": delayed, "floor": floor_delayed}
    try:
        for client in clients.values():
            await _stampede(client, 100, body)

        async def one(name: str) -> _Timing:
            hits = upstream[name].hits

            async def job() -> int:
                await _stampede(clients[name], plan.stampede, body)
                return upstream[name].hits - hits

            return await _timed(job)

        runs = await alternate(list(clients), plan.stampede_rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()
    wall: Spread = ratios([t.wall for t in runs["ours"]], [t.wall for t in runs["instant"]])
    floor: Spread = ratios([t.wall for t in runs["floor"]], [t.wall for t in runs["instant"]])
    calls = sorted({t.upstream for t in runs["ours"]})
    return {
        "requests": plan.stampede,
        "delay_s": plan.stampede_delay,
        "upstream_calls": calls,
        "wall_ratio": wall.as_dict(),
        "cpu_ratio": ratios([t.cpu for t in runs["ours"]], [t.cpu for t in runs["instant"]]).as_dict(),
        "floor_wall_ratio": floor.as_dict(),
        "ours_us_per_caller": spread([t.wall / plan.stampede * 1e6 for t in runs["ours"]]).median,
        "instant_us_per_request": spread([t.wall / plan.stampede * 1e6 for t in runs["instant"]]).median,
        "target": TARGET_STAMPEDE,
        "met": calls == [1] and wall.median <= TARGET_STAMPEDE,
        "rounds": wall.n,
    }


async def measure_stampede(plan: OverheadPlan) -> dict[str, Any]:
    """Figure 2, for each library."""
    body = orjson.dumps(chat_payload("stampede", 1024))
    return {lib.__name__: await _stampede_figure(lib, plan, body) for lib in libraries()}
