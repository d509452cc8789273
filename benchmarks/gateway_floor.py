"""The gateway against its own floor: a bare forwarder on the same server and client.

``python -m benchmarks.gateway_floor``. Three targets, measured in interleaved rounds
in one run: the bench server called directly; a bare forwarder (the gateway's server,
protocol, header rules and upstream pool, but no coalescing, no metrics, no access
log); and the gateway (``--no-access-log``). One client connection sends unique chat
completions one after another (unique: nothing coalesces, so this is the price every
request pays). Reported: the median latency each adds over the direct call, and the
server's CPU per request, with the gateway's as a ratio to the forwarder's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

from .gateway import Gateway
from .gateway_tools import PYTHON, Process, free_port, tree_cpu
from .server import BenchServer
from .stats import percentile

Message = MutableMapping[str, Any]


def forwarder(upstream: str) -> Any:
    """The bare forwarder's ASGI app: what the gateway does to a request, minus coalescing."""
    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover
        import httpx as http  # type: ignore[no-redef]

    from httpx_coalesce.gateway._connections import upstream_transport
    from httpx_coalesce.gateway._proxy import request_headers, response_headers

    transport = upstream_transport(100)

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
            await send({"type": "http.response.body", "body": b"ok\n"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"")
        url = upstream + scope["raw_path"].decode() + ("?" + query.decode() if query else "")
        headers = request_headers(scope["headers"], scope["client"][0], "http", True)
        request = http.Request(scope["method"], url, headers=headers, content=b"".join(chunks))
        response = await transport.handle_async_request(request)
        try:
            start = {"type": "http.response.start", "status": response.status_code}
            start["headers"] = response_headers(response.headers.raw, response.status_code)
            await send(start)
            stream: Any = response.stream  # an async one: the transport is async
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


def serve_forwarder(port: int, upstream: str) -> None:
    import uvicorn

    from httpx_coalesce.gateway._protocol import GatewayProtocol

    uvicorn.run(
        forwarder(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=GatewayProtocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


async def _measure(port: int, count: int, tag: str) -> list[float]:
    """Latencies (µs) of *count* unique POSTs, one after another on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies: list[float] = []
    try:
        for n in range(count):
            body = b'{"model":"m","messages":[{"role":"user","content":"%s-%d"}]}' % (tag.encode(), n)
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1e6)
    finally:
        writer.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="per target and round")
    parser.add_argument("--serve-forwarder", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_forwarder:
        serve_forwarder(int(args.serve_forwarder[0]), args.serve_forwarder[1])
        return 0
    latency: dict[str, list[float]] = {"direct": [], "forwarder": [], "gateway": []}
    cpu: dict[str, list[float]] = {"forwarder": [], "gateway": []}
    with BenchServer() as server:
        port = free_port()
        bare = Process(
            [PYTHON, "-m", "benchmarks.gateway_floor", "--serve-forwarder", str(port), server.url],
            f"http://127.0.0.1:{port}/healthz",
        )
        gateway = Gateway(server.url, "--no-access-log")
        try:
            targets = {
                "direct": (server.port, None),
                "forwarder": (port, bare.pid),
                "gateway": (gateway.port, gateway.pid),
            }
            for target, (target_port, _) in targets.items():  # warm-up
                asyncio.run(_measure(target_port, 100, f"warm-{target}"))
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(targets)[::-1]
                for target in order:
                    target_port, pid = targets[target]
                    before = tree_cpu(pid) if pid else 0.0
                    samples = asyncio.run(_measure(target_port, args.requests, f"{target}-{round_}"))
                    if pid:
                        cpu[target].append((tree_cpu(pid) - before) / args.requests * 1e6)
                    latency[target].append(percentile(samples, 0.5))
        finally:
            gateway.stop()
            bare.stop()
    direct = percentile(latency["direct"], 0.5)
    added = {name: percentile(latency[name], 0.5) - direct for name in ("forwarder", "gateway")}
    cpu_us = {name: percentile(cpu[name], 0.5) for name in cpu}
    print(
        f"gateway floor: {args.rounds} rounds x {args.requests} unique POSTs, one connection, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  direct p50 {direct:.0f} µs")
    for name in ("forwarder", "gateway"):
        print(f"  {name:9} adds {added[name]:.0f} µs p50, {cpu_us[name]:.0f} µs CPU per request")
    print(
        f"  gateway / forwarder: latency added {added['gateway'] / added['forwarder']:.2f}x, "
        f"CPU {cpu_us['gateway'] / cpu_us['forwarder']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
