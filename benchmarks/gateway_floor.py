"""The gateway against its own floor: a bare forwarder on the same server and client.

``python -m benchmarks.gateway_floor``. Four targets, measured in interleaved rounds
in one run: the bench server called directly; a bare forwarder (the gateway's server,
its settings, protocol, header rules and upstream pool, but no coalescing, no metrics,
no access log); the same forwarder through ``benchmarks.floor``'s FloorTransport (the
least any coalescer keeping the promises must do: a key over the canonical body, the
upstream call in a task of its own, a response per caller); and the gateway
(``--no-access-log``). One client connection sends unique chat completions one after
another (unique: nothing coalesces, so this is the price every request pays).
Reported: the median latency each adds over the direct call, and the server's CPU per
request, with the gateway's as a ratio to the bare forwarder's and to the floor
forwarder's: the first is what the issue targets, the second how far the gateway is
from what any coalescing gateway could reach.

``--against DIR`` adds the gateway of another checkout (say a worktree of ``main``) to
the same rounds, so a change is measured before and after under the same load.
Ratios are paired by round (median, min-max). ``--instructions N`` then counts each
server's instructions per request under valgrind's callgrind: on a shared machine,
CPU time moves with the load; instruction counts do not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from .gateway_tools import PYTHON, Process, free_port, tree_cpu
from .server import BenchServer
from .stats import Spread, percentile, ratios, spread

Message = MutableMapping[str, Any]


def forwarder(upstream: str, floor: bool = False) -> Any:
    """The bare forwarder's ASGI app: what the gateway does to a request, minus coalescing
    (*floor*: through the FloorTransport, the least coalescing there is)."""
    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover
        import httpx as http  # type: ignore[no-redef]

    from httpx_coalesce.gateway._connections import upstream_transport
    from httpx_coalesce.gateway._proxy import request_headers, response_headers

    transport: Any = upstream_transport(100)
    if floor:
        from .floor import FloorTransport

        transport = FloorTransport(transport)

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


def serve_forwarder(port: int, upstream: str, floor: bool = False) -> None:
    import uvicorn

    from httpx_coalesce.gateway._protocol import GatewayProtocol

    uvicorn.run(
        forwarder(upstream, floor),
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


def _commands(upstream: str, against: str | None) -> dict[str, tuple[list[str], int]]:
    """Each server measured, by name: its command line and its port."""
    commands: dict[str, tuple[list[str], int]] = {}
    port = free_port()
    commands["forwarder"] = (
        [PYTHON, "-m", "benchmarks.gateway_floor", "--serve-forwarder", str(port), upstream],
        port,
    )
    port = free_port()
    commands["floor"] = (
        [PYTHON, "-m", "benchmarks.gateway_floor", "--serve-forwarder", str(port), upstream, "floor"],
        port,
    )
    port = free_port()
    serve = ["serve", "--upstream", upstream, "--port", str(port), "--no-access-log"]
    commands["gateway"] = ([PYTHON, "-m", "httpx_coalesce", *serve], port)
    if against is not None:
        # The other checkout's package, imported from there: its directory goes first
        # on the path (python -m would put this directory, the working one, first).
        port = free_port()
        serve = ["serve", "--upstream", upstream, "--port", str(port), "--no-access-log"]
        code = (
            f"import runpy, sys; sys.path.insert(0, {os.path.abspath(against)!r}); "
            f"sys.argv = {['httpx-coalesce', *serve]!r}; "
            "runpy.run_module('httpx_coalesce', run_name='__main__')"
        )
        commands["against"] = ([PYTHON, "-c", code], port)
    return commands


def _instructions(argv: list[str], port: int, requests: int) -> float:
    """Instructions the server executes per request (valgrind's callgrind), counted from
    after a warm-up to the last request: unlike CPU time, the same under any load."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        counted = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        server = Process([*counted, *argv], f"http://127.0.0.1:{port}/healthz", timeout=600)
        try:
            asyncio.run(_measure(port, 100, "warm"))
            _callgrind(server.pid, "on")
            asyncio.run(_measure(port, requests, "counted"))
            _callgrind(server.pid, "off")
            # Stopped gently, so that callgrind writes its counts as the process ends.
            server.popen.send_signal(signal.SIGINT)
            server.popen.wait(timeout=300)
        finally:
            server.stop()
        totals = next(line for line in out.read_text().splitlines() if line.startswith("totals:"))
        return int(totals.split()[1]) / requests


def _callgrind(pid: int, instrumentation: str) -> None:
    subprocess.run(["callgrind_control", "-i", instrumentation, str(pid)], check=True, capture_output=True)


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
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="also count each server's instructions over N requests (needs valgrind)",
    )
    parser.add_argument(
        "--serve-forwarder", nargs="+", metavar="PORT UPSTREAM [floor]", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_forwarder:
        port, upstream, *floor = args.serve_forwarder
        serve_forwarder(int(port), upstream, floor == ["floor"])
        return 0
    with BenchServer() as server:
        commands = _commands(server.url, args.against)
        gateways = [name for name in commands if name not in ("forwarder", "floor")]
        latency: dict[str, list[float]] = {name: [] for name in ["direct", *commands]}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        processes: dict[str, Process] = {}
        try:
            for name, (argv, port) in commands.items():
                processes[name] = Process(argv, f"http://127.0.0.1:{port}/healthz")
            targets = {"direct": (server.port, None)} | {
                name: (port, processes[name].pid) for name, (_, port) in commands.items()
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
            for process in processes.values():
                process.stop()
        instructions = {
            name: _instructions(argv, port, args.instructions)
            for name, (argv, port) in commands.items()
            if args.instructions
        }
    added = {name: [a - d for a, d in zip(latency[name], latency["direct"], strict=True)] for name in cpu}
    print(
        f"gateway floor: {args.rounds} rounds x {args.requests} unique POSTs, one connection, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  direct p50 {spread(latency['direct']).median:.0f} µs")
    for name in cpu:
        line = (
            f"  {name:9} adds {spread(added[name]).median:.0f} µs p50, {spread(cpu[name]).median:.0f} µs CPU"
        )
        if name in instructions:
            line += f", {instructions[name] / 1000:,.0f}k instructions"
        print(line + " per request")
    for name, floor in [("floor", "forwarder"), *((g, f) for g in gateways for f in ("forwarder", "floor"))]:
        # Paired by round: a burst of load from elsewhere hits both of a round alike.
        latency_ratio = ratios(added[name], added[floor])
        cpu_ratio = ratios(cpu[name], cpu[floor])
        line = f"  {name} / {floor}: latency added {_ratio(latency_ratio)}, CPU {_ratio(cpu_ratio)}"
        if name in instructions:
            line += f", instructions {instructions[name] / instructions[floor]:.3f}x"
        print(line)
    return 0


def _ratio(summary: Spread) -> str:
    return f"{summary.median:.2f}x ({summary.low:.2f}-{summary.high:.2f})"


if __name__ == "__main__":
    sys.exit(main())
