"""Where our cost goes on the path that does not coalesce, per request, by function.

The same unique-key requests (1 KB JSON, one at a time, in-process upstream) run under
cProfile through the bare client and through ``CoalescingTransport``; a function's
cost per request is its own time (tottime) divided by the requests, and what we add
is the difference between the two profiles, function by function. cProfile inflates
every call by roughly the same amount, so shares are what to read, not totals.

The same comparison for followers: N identical requests at once through ours (one
upstream call) against N through the bare client to an upstream answering at once.

Run alone: ``python -m benchmarks.hotspots [--requests N] [--library httpx2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import pstats
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from httpx_coalesce import CoalescingTransport

from .floor import settle_pricing
from .inprocess import InProcessUpstream
from .workloads import chat_payload

__all__ = ["Hotspot", "profile_followers", "profile_overhead"]

_URL = "http://upstream.bench/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}

FunctionKey = tuple[str, int, str]


@dataclass(frozen=True)
class Hotspot:
    function: str
    #: Own time per request (µs) with our transport, and without it.
    ours_us: float
    base_us: float
    #: Cumulative time per request (µs) with our transport: the function and its callees.
    ours_cumulative_us: float
    calls_per_request: float

    @property
    def added_us(self) -> float:
        return self.ours_us - self.base_us

    def as_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "added_us": round(self.added_us, 2),
            "ours_us": round(self.ours_us, 2),
            "base_us": round(self.base_us, 2),
            "ours_cumulative_us": round(self.ours_cumulative_us, 2),
            "calls_per_request": round(self.calls_per_request, 2),
        }


async def _send(client: Any, bodies: list[bytes]) -> None:
    for body in bodies:
        await client.post(_URL, content=body, headers=_HEADERS)


async def _stampede(client: Any, body: bytes, callers: int) -> None:
    await asyncio.gather(*(client.post(_URL, content=body, headers=_HEADERS) for _ in range(callers)))


Job = Callable[[Any], Awaitable[None]]


def _profile(client: Any, warm: Job, job: Job) -> dict[FunctionKey, tuple[int, int, float, float]]:
    async def run() -> None:
        await warm(client)  # unprofiled: first-call costs are not per-request costs
        settle_pricing()  # the price list's one-off import, in its thread, is not either
        profiler.enable()
        await job(client)
        profiler.disable()
        await client.aclose()

    profiler = cProfile.Profile()
    asyncio.run(run())
    raw: dict[FunctionKey, tuple[int, int, float, float, Any]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return {key: value[:4] for key, value in raw.items()}


def _name(key: FunctionKey) -> str:
    filename, line, function = key
    if filename == "~":
        return function  # a builtin, e.g. <built-in method orjson.loads>
    # Our own files keep their package's name: the call tree below picks them out by it.
    markers = (("/httpx_coalesce/", "httpx_coalesce/"), ("/site-packages/", ""), ("/lib/python", ""))
    for marker, kept in markers:
        if marker in filename:
            filename = kept + filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({function})"


def _compare(
    base: dict[FunctionKey, tuple[int, int, float, float]],
    ours: dict[FunctionKey, tuple[int, int, float, float]],
    requests: int,
    top: int,
) -> dict[str, Any]:
    hotspots = []
    for key in set(base) | set(ours):
        _, ours_calls, ours_tt, ours_ct = ours.get(key, (0, 0, 0.0, 0.0))
        _, _, base_tt, _ = base.get(key, (0, 0, 0.0, 0.0))
        hotspots.append(
            Hotspot(
                function=_name(key),
                ours_us=ours_tt / requests * 1e6,
                base_us=base_tt / requests * 1e6,
                ours_cumulative_us=ours_ct / requests * 1e6,
                calls_per_request=ours_calls / requests,
            )
        )
    hotspots.sort(key=lambda spot: spot.added_us, reverse=True)
    ours_total = sum(value[2] for value in ours.values()) / requests * 1e6
    base_total = sum(value[2] for value in base.values()) / requests * 1e6
    # Our own functions by cumulative time: the call tree of the transport, top down.
    tree = sorted(
        (spot for spot in hotspots if "httpx_coalesce/" in spot.function),
        key=lambda spot: spot.ours_cumulative_us,
        reverse=True,
    )
    return {
        "requests": requests,
        "profiled_us_per_request": {"ours": round(ours_total, 1), "base": round(base_total, 1)},
        "added": [spot.as_dict() for spot in hotspots[:top]],
        "ours_cumulative": [spot.as_dict() for spot in tree[:top]],
    }


def profile_overhead(
    requests: int = 3000, library: ModuleType | None = None, top: int = 25
) -> dict[str, Any]:
    """Unique keys one at a time: the bare client against ours, function by function."""
    lib = library or importlib.import_module("httpx")
    bodies = [orjson.dumps(chat_payload(f"hot-{i}", 1024)) for i in range(requests + 100)]

    async def warm(client: Any) -> None:
        await _send(client, bodies[:100])

    async def job(client: Any) -> None:
        await _send(client, bodies[100:])

    base = _profile(lib.AsyncClient(transport=InProcessUpstream(lib)), warm, job)
    ours = _profile(lib.AsyncClient(transport=CoalescingTransport(InProcessUpstream(lib))), warm, job)
    return {"library": lib.__name__, **_compare(base, ours, requests, top)}


def profile_followers(
    callers: int = 2000, library: ModuleType | None = None, top: int = 25
) -> dict[str, Any]:
    """*callers* identical requests at once: ours (one upstream call, the rest follow)
    against the bare client sending each to an upstream that answers at once; what a
    follower costs beyond an ordinary request."""
    lib = library or importlib.import_module("httpx")
    body = orjson.dumps(chat_payload("followers", 1024))

    async def warm(client: Any) -> None:
        await _stampede(client, body, 100)

    async def job(client: Any) -> None:
        await _stampede(client, body, callers)

    base = _profile(lib.AsyncClient(transport=InProcessUpstream(lib)), warm, job)
    delayed = InProcessUpstream(lib, delay=0.005)
    ours = _profile(lib.AsyncClient(transport=CoalescingTransport(delayed)), warm, job)
    return {"library": lib.__name__, **_compare(base, ours, callers, top)}


def _print(title: str, result: dict[str, Any]) -> None:
    totals = result["profiled_us_per_request"]
    print(f"\n== {title} ({result['library']}, {result['requests']:,} requests)")
    print(f"{totals['ours']} µs/request with ours, {totals['base']} bare (under cProfile)")
    print("Added own time per request (µs), biggest first:")
    for spot in result["added"]:
        print(f"  {spot['added_us']:8.2f}  x{spot['calls_per_request']:<5} {spot['function']}")
    print("Our functions by cumulative time per request (µs):")
    for spot in result["ours_cumulative"]:
        print(f"  {spot['ours_cumulative_us']:8.2f}  {spot['function']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--library", default="httpx", choices=["httpx", "httpx2"])
    args = parser.parse_args(argv)
    library = importlib.import_module(args.library)
    _print("unique keys, one at a time", profile_overhead(args.requests, library))
    _print("identical keys, all at once (followers)", profile_followers(args.requests, library))
    return 0


if __name__ == "__main__":
    sys.exit(main())
