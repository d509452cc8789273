"""The gateway against its own floor: a bare forwarder on the same server and client.

``python -m benchmarks.gateway_floor``. Three targets, measured in interleaved rounds
in one run: the bench server called directly; a bare forwarder (the gateway's server,
its settings, protocol, header rules and upstream pool, but no coalescing, no metrics,
no access log); and the gateway (``--no-access-log``). One client connection sends
unique chat completions one after another (unique: nothing coalesces, so this is the
price every request pays). Reported: the median latency each adds over the direct
call, and the server's CPU per request, with the gateway's as a ratio to the
forwarder's.

``--against DIR`` adds the gateway of another checkout (say a worktree of ``main``) to
the same rounds, so a change is measured before and after under the same load.
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
        # As the gateway runs it (_cli.serve): uvicorn's defaults would add its proxy
        # headers middleware, which the gateway does without.
        server_header=False,
        date_header=False,
        proxy_headers=False,
    )


def _other_gateway(checkout: str, upstream: str, port: int) -> Process:
    """The gateway of *checkout*, imported from there (its directory first on the path)."""
    argv = ["httpx-coalesce", "serve", "--upstream", upstream, "--port", str(port), "--no-access-log"]
    code = (
        f"import runpy, sys; sys.path.insert(0, {os.path.abspath(checkout)!r}); sys.argv = {argv!r}; "
        "runpy.run_module('httpx_coalesce', run_name='__main__')"
    )
    return Process([PYTHON, "-c", code], f"http://127.0.0.1:{port}/healthz")


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
    parser.add_argument("--against", metavar="DIR", help="also measure the gateway of this checkout")
    parser.add_argument("--serve-forwarder", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_forwarder:
        serve_forwarder(int(args.serve_forwarder[0]), args.serve_forwarder[1])
        return 0
    gateways = ["gateway"] + (["against"] if args.against else [])
    latency: dict[str, list[float]] = {name: [] for name in ["direct", "forwarder", *gateways]}
    cpu: dict[str, list[float]] = {name: [] for name in ["forwarder", *gateways]}
    with BenchServer() as server:
        port = free_port()
        bare = Process(
            [PYTHON, "-m", "benchmarks.gateway_floor", "--serve-forwarder", str(port), server.url],
            f"http://127.0.0.1:{port}/healthz",
        )
        gateway = Gateway(server.url, "--no-access-log")
        other_port = free_port()
        other_process = _other_gateway(args.against, server.url, other_port) if args.against else None
        try:
            targets = {
                "direct": (server.port, None),
                "forwarder": (port, bare.pid),
                "gateway": (gateway.port, gateway.pid),
            }
            if other_process is not None:
                targets["against"] = (other_port, other_process.pid)
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
            if other_process is not None:
                other_process.stop()
    direct = percentile(latency["direct"], 0.5)
    added = {name: percentile(latency[name], 0.5) - direct for name in cpu}
    cpu_us = {name: percentile(cpu[name], 0.5) for name in cpu}
    print(
        f"gateway floor: {args.rounds} rounds x {args.requests} unique POSTs, one connection, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  direct p50 {direct:.0f} µs")
    for name in cpu:
        print(f"  {name:9} adds {added[name]:.0f} µs p50, {cpu_us[name]:.0f} µs CPU per request")
    for name in gateways:
        print(
            f"  {name} / forwarder: latency added {added[name] / added['forwarder']:.2f}x, "
            f"CPU {cpu_us[name] / cpu_us['forwarder']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
