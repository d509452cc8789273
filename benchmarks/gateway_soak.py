"""A soak of the gateway under mixed normal, streamed and hostile traffic (not CI).

``python -m benchmarks.gateway_soak --seconds 300``: the gateway in front of the bench
server, and at once, for the whole run:

- normal: clients posting chat completions drawn from a few bodies (so many coalesce);
- streamed: clients reading an SSE stream, one in four leaving halfway;
- hostile: idle connections, heads sent a byte at a time, bodies that stop, endless
  headers, clients that never read a 4 MB answer, paths with ``..``, trailers.

It reports the gateway's resident memory, open descriptors, flights and waiters at the
start (after a warm-up) and at the end (once the traffic stopped and the client
timeouts have passed), and what each kind of client got. Flat memory and descriptors,
and no flight or waiter left, are the pass condition.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx

from .gateway import Gateway
from .gateway_tools import tree_rss
from .server import BenchServer

#: Short client bounds, so hostile clients cycle many times in a run.
TIMEOUT = 3.0
FLAGS = (
    "--client-header-timeout",
    str(TIMEOUT),
    "--client-body-timeout",
    str(TIMEOUT),
    "--send-timeout",
    str(TIMEOUT),
    "--keepalive-timeout",
    str(TIMEOUT),
    "--no-access-log",
)

outcomes: Counter[str] = Counter()


def snapshot(gateway: Gateway) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text

    def gauge(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    return {
        "rss_mb": tree_rss(gateway.pid) / 1e6,
        "descriptors": len(os.listdir(f"/proc/{gateway.pid}/fd")),
        "flights": gauge("httpx_coalesce_flights_active"),
        "waiters": gauge("httpx_coalesce_waiters_active"),
    }


async def forever(kind: str, until: float, step: Callable[[], Awaitable[None]]) -> None:
    while time.monotonic() < until:
        try:
            await step()
            outcomes[kind + " ok"] += 1
        except (OSError, httpx.HTTPError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
            outcomes[f"{kind} {type(error).__name__}"] += 1


async def raw(port: int, data: bytes, *, read: bool = True, hold: float = 0.0, drip: float = 0.0) -> bytes:
    """Send *data* (a byte at a time every *drip* s if set), hold, then read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if drip:
            for byte in data:
                writer.write(bytes([byte]))
                await asyncio.sleep(drip)
        else:
            writer.write(data)
        await writer.drain()
        if hold:
            await asyncio.sleep(hold)
        return await asyncio.wait_for(reader.read(), 30) if read else b""
    finally:
        writer.close()


async def run(gateway: Gateway, seconds: float, clients: int) -> None:
    until = time.monotonic() + seconds
    port = gateway.port
    async with httpx.AsyncClient(
        base_url=gateway.url, timeout=60, limits=httpx.Limits(max_connections=200)
    ) as http:

        async def normal() -> None:
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{random.randrange(20)}"}]}
            response = await http.post("/v1/chat/completions?latency=0.05", json=body)
            response.raise_for_status()

        async def streamed() -> None:
            leave = random.random() < 0.25
            async with http.stream("GET", "/v1/stream?events=40&size=256&gap=0.005") as response:
                lines = 0
                async for _ in response.aiter_lines():
                    lines += 1
                    if leave and lines > 40:
                        break

        async def idle() -> None:
            await raw(port, b"", hold=TIMEOUT + 1)

        async def slow_head() -> None:
            await raw(port, b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n", drip=0.5)

        async def stopped_body() -> None:
            await raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")

        async def endless_header() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: ")
                for _ in range(64):
                    writer.write(b"v" * 16384)
                    await writer.drain()
            finally:
                writer.close()

        async def never_reads() -> None:
            await raw(
                port, b"GET /v1/blob?size=4000000 HTTP/1.1\r\nhost: x\r\n\r\n", read=False, hold=TIMEOUT + 1
            )

        async def dot_segments() -> None:
            answer = await raw(
                port, b"GET /v1/../../etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 400"), answer[:40]

        async def trailers() -> None:
            await raw(
                port,
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                b"connection: close\r\n\r\n2\r\n{}\r\n0\r\nauthorization: Bearer x\r\n\r\n",
            )

        kinds: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
            ("normal", normal, clients),
            ("streamed", streamed, max(1, clients // 4)),
            ("idle", idle, 20),
            ("slow-head", slow_head, 10),
            ("stopped-body", stopped_body, 10),
            ("endless-header", endless_header, 2),
            ("never-reads", never_reads, 4),
            ("dot-segments", dot_segments, 2),
            ("trailers", trailers, 2),
        ]
        await asyncio.gather(
            *(forever(kind, until, step) for kind, step, count in kinds for _ in range(count))
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=40, help="normal clients (streamed: a quarter)")
    args = parser.parse_args()
    # Writes to connections the gateway cut (the point of the hostile clients) are not news.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    with BenchServer() as server:
        gateway = Gateway(server.url, *FLAGS)
        try:
            # Warm-up: the transport, its pool and the metrics exporter exist.
            asyncio.run(run(gateway, 5, 4))
            time.sleep(TIMEOUT + 1)
            start = snapshot(gateway)
            outcomes.clear()
            began = time.monotonic()
            asyncio.run(run(gateway, args.seconds, args.clients))
            ran = time.monotonic() - began
            time.sleep(TIMEOUT + 2)  # every client bound has passed
            end = snapshot(gateway)
        finally:
            gateway.stop()
    print(f"soak: {ran:.0f} s of mixed traffic, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'':12} {'start':>10} {'end':>10}")
    for name in start:
        print(f"{name:12} {start[name]:10.1f} {end[name]:10.1f}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:32} {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
