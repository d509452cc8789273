"""The gateway's figures, side by side in one run: ``python -m benchmarks.gateway``.

Contenders, each a process of its own on loopback, all in front of one upstream
(``benchmarks.server``, its own process too):

* ``direct``: the upstream called directly (the floor);
* ``gateway``: ``httpx-coalesce serve`` as a user runs it (one worker, access log on);
* ``nginx``: nginx as a plain reverse proxy (one worker, keep-alive upstream);
* ``nginx collapse``: nginx with ``proxy_cache`` on the request body and ``proxy_cache_lock``.

Workloads, in alternating rounds (a round runs every contender once, so a burst of load
from the other work on this shared two-core machine hits them alike):

1. added latency over ``direct``, one connection, unique bodies, p50 and p99 (wrk);
2. throughput at 32 connections, unique bodies, and the gateway's CPU per request;
3. 1,000 identical POSTs at once (upstream answers after 200 ms): upstream calls, the
   waiters' first byte, wall time, the proxy's resident memory before and at the peak;
4. one SSE stream (100 events 10 ms apart) shared by 100 clients: the same figures.

Writes ``benchmarks/results/gateway.json``, ``gateway.md`` and ``gateway.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .gateway_nginx import Nginx
from .gateway_tools import PYTHON, ROOT, Process, free_port, have, tree_cpu, tree_rss, wrk
from .server import BenchServer
from .stats import percentile, spread

RESULTS = ROOT / "benchmarks" / "results"
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass
class Burst:
    """One burst of identical requests through one contender."""

    upstream_calls: int
    #: Each client's time from sending its request to its first body byte (SSE: its
    #: first event), in seconds.
    first_byte: list[float]
    wall: float
    #: Resident memory of the proxy's processes before the burst, and at its peak.
    idle_memory: int
    peak_memory: int
    complete: int


class Gateway:
    """``httpx-coalesce serve`` in a process of its own."""

    def __init__(self, upstream: str, *flags: str) -> None:
        self.port = free_port()
        self._process = Process(
            [
                PYTHON,
                "-m",
                "httpx_coalesce",
                "serve",
                "--upstream",
                upstream,
                "--port",
                str(self.port),
                *flags,
            ],
            f"http://127.0.0.1:{self.port}/healthz",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        self._process.stop()


# -- the burst client: raw asyncio sockets, one connection per client -----------------------


async def _client(port: int, request: bytes, marker: bytes, ready: asyncio.Event) -> tuple[float, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await ready.wait()
        sent = time.perf_counter()
        writer.write(request)
        await writer.drain()
        seen = b""
        first = 0.0
        last = False
        while chunk := await reader.read(65536):
            if not first:
                seen += chunk
                _, sep, body = seen.partition(b"\r\n\r\n")
                if sep and (marker in body if marker else body):
                    first = time.perf_counter() - sent
            else:
                # Only a tail is kept: enough for a marker split between two reads.
                seen = seen[-64:] + chunk
            last = last or b'"last":true' in seen
        return first, (last if marker else bool(first))
    finally:
        writer.close()


def _request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer sk-bench\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def burst(server: BenchServer, port: int, pid: int, path: str, clients: int, marker: bytes) -> Burst:
    """*clients* identical requests at once (connections opened first, then all sent)."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": uuid.uuid4().hex}]})
    request = _request(path, body.encode())
    idle = tree_rss(pid)
    peak = idle
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)

    async def run() -> tuple[int, list[tuple[float, bool]], float]:
        before = await server.hits()
        ready = asyncio.Event()
        tasks = [asyncio.create_task(_client(port, request, marker, ready)) for _ in range(clients)]
        await asyncio.sleep(0.2)  # every connection open before the first request is sent
        started = time.perf_counter()
        ready.set()
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
        return await server.hits() - before, results, wall

    sampler.start()
    try:
        calls, results, wall = asyncio.run(run())
    finally:
        stop.set()
        sampler.join()
    return Burst(
        upstream_calls=calls,
        first_byte=[first for first, _ in results],
        wall=wall,
        idle_memory=idle,
        peak_memory=peak,
        complete=sum(ok for _, ok in results),
    )


# -- the run -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="seconds per wrk measurement")
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--sse-clients", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, nothing written")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.posts, args.sse_clients = 1, 1, 20, 5
    for program in ("wrk", "nginx"):
        if not have(program):
            print(f"{program} is needed: apt-get install {program}", file=sys.stderr)
            return 2
    started_at = datetime.now(timezone.utc)
    load_before = _loadavg()
    clock = time.perf_counter()
    raw: dict[str, Any] = {}

    def record(name: str, value: Any) -> None:
        raw.setdefault(name, []).append(value)

    post_path = "/v1/chat/completions?latency=0.2"
    sse_path = "/v1/stream?events=100&size=200&gap=0.01&latency=0.05"
    chat_path = "/v1/chat/completions"
    with BenchServer() as server:
        gateway = Gateway(server.url)
        try:
            gateway2 = Gateway(server.url, "--workers", "2")
        except BaseException:
            gateway.stop()
            raise
        try:
            with Nginx(server.port, collapse=False) as plain, Nginx(server.port, collapse=True) as collapse:
                for round_number in range(args.rounds):
                    print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr)
                    # 1. added latency, one connection.
                    direct = wrk(server.url + chat_path, 1, args.seconds)
                    record("latency.direct", _load(direct))
                    for name, url in (("gateway", gateway.url), ("nginx", plain.url)):
                        record(f"latency.{name}", _load(wrk(url + chat_path, 1, args.seconds)))
                    # 2. throughput, 32 connections; CPU of the proxy's processes.
                    for name, url, pid in (
                        ("gateway", gateway.url, gateway.pid),
                        ("gateway 2 workers", gateway2.url, gateway2.pid),
                        ("nginx", plain.url, plain.pid),
                    ):
                        before = tree_cpu(pid)
                        load = wrk(url + chat_path, 32, args.seconds)
                        cpu = tree_cpu(pid) - before
                        # A loaded machine may let a short (--quick) run finish no request:
                        # its CPU per request is then unknown, not a crash of the run.
                        per_request = cpu / load.requests * 1e6 if load.requests else math.nan
                        record(f"throughput.{name}", {**_load(load), "cpu_per_request_us": per_request})
                    record("throughput.direct", _load(wrk(server.url + chat_path, 32, args.seconds)))
                    # 3 and 4. bursts of identical requests.
                    for name, port, pid in (
                        ("gateway", gateway.port, gateway.pid),
                        ("nginx collapse", collapse.port, collapse.pid),
                    ):
                        record(f"posts.{name}", burst(server, port, pid, post_path, args.posts, b"").__dict__)
                        record(
                            f"sse.{name}",
                            burst(server, port, pid, sse_path, args.sse_clients, b"data:").__dict__,
                        )
        finally:
            gateway.stop()
            gateway2.stop()
    summary = summarise(raw)
    meta = {
        "command": "python -m benchmarks.gateway" + (" --quick" if args.quick else ""),
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": _cpus(),
        "load_before": load_before,
        "load_after": _loadavg(),
        "rounds": args.rounds,
    }
    table = render(summary, meta)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gateway.json").write_text(
            json.dumps({"meta": meta, "summary": summary, "raw": compact(raw)}, indent=1) + "\n"
        )
        (RESULTS / "gateway.md").write_text(table)
        plot(summary, RESULTS / "gateway.png")
    return 0


def compact(raw: dict[str, Any]) -> dict[str, Any]:
    """The rounds as recorded, with each burst's per-client times cut to percentiles."""
    out: dict[str, Any] = {}
    for name, rounds in raw.items():
        out[name] = [
            {
                **{key: value for key, value in entry.items() if key != "first_byte"},
                "first_byte_ms": {
                    f"p{round(fraction * 100)}": percentile(entry["first_byte"], fraction) * 1e3
                    for fraction in (0.0, 0.5, 0.9, 0.99, 1.0)
                },
            }
            if "first_byte" in entry
            else entry
            for entry in rounds
        ]
    return out


def _load(load: Any) -> dict[str, float]:
    return {"p50_us": load.p50_us, "p99_us": load.p99_us, "rate": load.rate, "errors": load.errors}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(entry[key]) for entry in rounds)


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    direct = raw["latency.direct"]
    for name in ("gateway", "nginx"):
        rounds = raw[f"latency.{name}"]
        added50 = [r["p50_us"] - d["p50_us"] for r, d in zip(rounds, direct, strict=True)]
        added99 = [r["p99_us"] - d["p99_us"] for r, d in zip(rounds, direct, strict=True)]
        out[f"latency.{name}"] = {
            "added_p50_us": spread(added50).as_dict(),
            "added_p99_us": spread(added99).as_dict(),
            "p50_us": _median(rounds, "p50_us"),
            "p99_us": _median(rounds, "p99_us"),
        }
    out["latency.direct"] = {"p50_us": _median(direct, "p50_us"), "p99_us": _median(direct, "p99_us")}
    for name in ("gateway", "gateway 2 workers", "nginx", "direct"):
        rounds = raw[f"throughput.{name}"]
        entry: dict[str, Any] = {"rate": spread([r["rate"] for r in rounds]).as_dict()}
        if "cpu_per_request_us" in rounds[0]:
            entry["cpu_per_request_us"] = spread([r["cpu_per_request_us"] for r in rounds]).as_dict()
        out[f"throughput.{name}"] = entry
    for workload in ("posts", "sse"):
        for name in ("gateway", "nginx collapse"):
            rounds = raw[f"{workload}.{name}"]
            out[f"{workload}.{name}"] = {
                "upstream_calls": spread([r["upstream_calls"] for r in rounds]).as_dict(),
                "first_byte_p50_ms": spread(
                    [percentile(r["first_byte"], 0.5) * 1e3 for r in rounds]
                ).as_dict(),
                "first_byte_p99_ms": spread(
                    [percentile(r["first_byte"], 0.99) * 1e3 for r in rounds]
                ).as_dict(),
                "wall_ms": spread([r["wall"] * 1e3 for r in rounds]).as_dict(),
                "peak_memory_mb": spread([r["peak_memory"] / 2**20 for r in rounds]).as_dict(),
                "idle_memory_mb": spread([r["idle_memory"] / 2**20 for r in rounds]).as_dict(),
                "complete": min(r["complete"] for r in rounds),
                "clients": len(rounds[0]["first_byte"]),
            }
    return out


def _range(entry: dict[str, Any], unit: str = "", digits: int = 0) -> str:
    def fmt(value: float) -> str:
        return f"{value:,.{digits}f}{unit}"

    if entry["n"] == 1:
        return fmt(entry["median"])
    return f"{fmt(entry['median'])} ({fmt(entry['low'])}{DASH}{fmt(entry['high'])})"


def _ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    return f"{theirs['median'] / ours['median']:.1f}{TIMES}" if ours["median"] > 0 else DASH


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Gateway benchmark results",
        "",
        f"`{meta['command']}`, {meta['started']}, {meta['seconds']} s; Python {meta['python']}, "
        f"{meta['platform']}, {meta['cpus']} CPUs; load average {meta['load_before']} at the start, "
        f"{meta['load_after']} at the end (other work on the machine shows up as spread): "
        "figures are medians of alternating rounds with the lowest and highest round in brackets.",
        "",
        "## Added latency over calling the upstream directly (one connection, unique bodies)",
        "",
        "| proxy | added p50 | added p99 | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    direct = summary["latency.direct"]
    for name, label in (("gateway", "httpx-coalesce serve"), ("nginx", "nginx, plain proxy")):
        entry = summary[f"latency.{name}"]
        lines.append(
            f"| {label} | {_range(entry['added_p50_us'], ' µs')} | {_range(entry['added_p99_us'], ' µs')} | "
            f"{entry['p50_us']:,.0f} µs | {entry['p99_us']:,.0f} µs |"
        )
    lines.append(
        f"| upstream directly | {DASH} | {DASH} | {direct['p50_us']:,.0f} µs | {direct['p99_us']:,.0f} µs |"
    )
    lines += [
        "",
        "## Throughput, 32 connections, unique bodies (wrk on the same two cores)",
        "",
        "| proxy | requests/s | proxy CPU per request |",
        "|---|---|---|",
    ]
    for name, label in (
        ("gateway", "httpx-coalesce serve, 1 worker"),
        ("gateway 2 workers", "httpx-coalesce serve, 2 workers"),
        ("nginx", "nginx, plain proxy, 1 worker"),
        ("direct", "upstream directly"),
    ):
        entry = summary[f"throughput.{name}"]
        cpu = _range(entry["cpu_per_request_us"], " µs") if "cpu_per_request_us" in entry else DASH
        lines.append(f"| {label} | {_range(entry['rate'])} | {cpu} |")
    for workload, title in (
        ("posts", "identical POSTs at once, upstream answers after 200 ms"),
        ("sse", "clients of one SSE stream (100 events, 10 ms apart, first after 50 ms)"),
    ):
        ours, theirs = summary[f"{workload}.gateway"], summary[f"{workload}.nginx collapse"]
        lines += [
            "",
            f"## {ours['clients']:,} {title}",
            "",
            "| | httpx-coalesce serve | nginx proxy_cache + proxy_cache_lock | nginx ÷ ours |",
            "|---|---|---|---|",
            f"| upstream calls | {_range(ours['upstream_calls'])} | "
            f"{_range(theirs['upstream_calls'])} | {DASH} |",
        ]
        for key, label, unit, digits in (
            ("first_byte_p50_ms", "first byte, median client", " ms", 1),
            ("first_byte_p99_ms", "first byte, p99 client", " ms", 1),
            ("wall_ms", "wall time", " ms", 0),
            ("idle_memory_mb", "proxy memory (RSS) before", " MB", 1),
            ("peak_memory_mb", "proxy memory (RSS) at the peak", " MB", 1),
        ):
            lines.append(
                f"| {label} | {_range(ours[key], unit, digits)} | {_range(theirs[key], unit, digits)} | "
                f"{_ratio(ours[key], theirs[key])} |"
            )
        lines.append(
            f"| clients that got the whole answer | {ours['complete']:,} | {theirs['complete']:,} | {DASH} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ["httpx-coalesce\nserve", "nginx"]
    colours = ["#1f77b4", "#999999"]
    added = [summary[f"latency.{name}"]["added_p50_us"]["median"] for name in ("gateway", "nginx")]
    added99 = [summary[f"latency.{name}"]["added_p99_us"]["median"] for name in ("gateway", "nginx")]
    positions = range(len(names))
    axes[0].bar([p - 0.2 for p in positions], added, 0.4, color=colours, label="p50")
    axes[0].bar([p + 0.2 for p in positions], added99, 0.4, color=colours, alpha=0.45, label="p99")
    axes[0].set_xticks(list(positions), names)
    axes[0].set_ylabel("µs added over the upstream directly")
    axes[0].set_title("Added latency, unique bodies\n(p50 solid, p99 light)")
    for axis, workload, title in (
        (axes[1], "posts", "1,000 identical POSTs"),
        (axes[2], "sse", "SSE stream, 100 clients"),
    ):
        values = [
            summary[f"{workload}.{name}"]["first_byte_p50_ms"]["median"]
            for name in ("gateway", "nginx collapse")
        ]
        calls = [
            summary[f"{workload}.{name}"]["upstream_calls"]["median"]
            for name in ("gateway", "nginx collapse")
        ]
        bars = axis.bar(names, values, color=colours)
        for bar, count in zip(bars, calls, strict=True):
            axis.annotate(
                f"{count:.0f} upstream call{'s' if count != 1 else ''}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axis.set_ylabel("ms to first byte, median client")
        axis.set_title(f"{title}\n(nginx: proxy_cache_lock)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
