"""How long after its headers a body of known length is complete, by size, alone.

The transport reads bodies up to ``SMALL_BODY_BYTES`` whole before it hands out their
headers (every caller then shares one bytes object); longer ones go out live. This
measures what that wait costs a caller: with a bare httpx client over loopback, the
time from ``client.stream()`` returning (the headers) to the last byte, next to the
time to the headers themselves. ``python -m benchmarks.small_body``.

Loopback has no propagation delay, so this is the floor of the wait; over a network a
body that fits the sender's first flight of packets (a TCP initial window is about
14 KB) still arrives with its headers, while a longer one waits for acknowledgements:
a round trip or more.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from .server import BenchServer
from .stats import percentile, spread

SIZES = (1024, 4 * 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)


async def measure(url: str, size: int, samples: int) -> tuple[list[float], list[float]]:
    heads: list[float] = []
    waits: list[float] = []
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(samples):
            started = time.perf_counter()
            async with client.stream("POST", f"/v1/blob?size={size}&latency=0") as response:
                headed = time.perf_counter()
                await response.aread()
                done = time.perf_counter()
            heads.append(headed - started)
            waits.append(done - headed)
    return heads, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with BenchServer() as server:
        print("| body | headers after (median) | last byte after headers: median · p99 | wait / headers |")
        print("|---|---|---|---|")
        for size in SIZES:
            heads, waits = asyncio.run(measure(server.url, size, args.samples))
            head = spread(heads).median
            wait = spread(waits).median
            print(
                f"| {size // 1024} KiB | {head * 1e6:.0f} µs | {wait * 1e6:.0f} µs · "
                f"{percentile(waits, 0.99) * 1e6:.0f} µs | {wait / head:.2f} |"
            )


if __name__ == "__main__":
    main()
