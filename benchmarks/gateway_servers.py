"""Which ASGI server the gateway runs on, chosen by measurement.

``python -m benchmarks.gateway_servers``: the same gateway app under each candidate
server, one worker each, against the same loopback upstream, in alternating rounds:
added latency over calling the upstream directly (one connection, unique keys) and
throughput with the gateway's CPU per request (32 connections). Writes
``benchmarks/results/gateway_servers.json`` and ``.md``, and prints the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from .gateway_tools import PYTHON, ROOT, Process, free_port, tree_cpu, wrk
from .server import BenchServer

ROUNDS = 3
LATENCY_SECONDS = 3.0
THROUGHPUT_SECONDS = 4.0
CONNECTIONS = 32


def _commands(port: int) -> dict[str, list[str]]:
    factory = "httpx_coalesce.gateway._app:app_from_env"
    uvicorn = [PYTHON, "-m", "uvicorn", "--factory", factory, "--port", str(port), "--log-level", "warning"]
    uvicorn += ["--no-access-log", "--no-server-header", "--no-date-header"]
    return {
        "uvicorn (h11, asyncio)": [*uvicorn, "--http", "h11", "--loop", "asyncio"],
        "uvicorn (httptools, uvloop)": [*uvicorn, "--http", "httptools", "--loop", "uvloop"],
        "granian (uvloop)": [
            *(PYTHON, "-m", "granian", "--interface", "asgi", "--factory", "--port", str(port)),
            *("--no-ws", "--loop", "uvloop", "--log-level", "warning", factory),
        ],
        "hypercorn (uvloop)": [
            *(PYTHON, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "-k", "uvloop"),
            *("--log-level", "warning", f"{factory}()"),
        ],
    }


def _gateway_env(upstream: str) -> dict[str, str]:
    from httpx_coalesce.gateway._config import CONFIG_ENV, config_from_args

    config = config_from_args(["--upstream", upstream, "--no-access-log"])
    return {CONFIG_ENV: config.to_json()}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Sequence[str] = ()) -> int:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = _loadavg()
    results: dict[str, dict[str, list[float]]] = {}
    with BenchServer() as upstream:
        env = _gateway_env(upstream.url)
        path = "/v1/chat/completions"
        names = list(_commands(0))
        servers: dict[str, tuple[Process, int]] = {}
        try:
            for name in names:
                port = free_port()
                command = _commands(port)[name]
                servers[name] = (Process(command, f"http://127.0.0.1:{port}/healthz", env), port)
            for _ in range(ROUNDS):
                base = wrk(upstream.url + path, 1, LATENCY_SECONDS)
                results.setdefault("direct", {}).setdefault("p50_us", []).append(base.p50_us)
                results["direct"].setdefault("p99_us", []).append(base.p99_us)
                for name in names:
                    process, port = servers[name]
                    url = f"http://127.0.0.1:{port}{path}"
                    latency = wrk(url, 1, LATENCY_SECONDS)
                    before = tree_cpu(process.pid)
                    load = wrk(url, CONNECTIONS, THROUGHPUT_SECONDS)
                    cpu = tree_cpu(process.pid) - before
                    row = results.setdefault(name, {})
                    row.setdefault("added_p50_us", []).append(latency.p50_us - base.p50_us)
                    row.setdefault("added_p99_us", []).append(latency.p99_us - base.p99_us)
                    row.setdefault("rate", []).append(load.rate)
                    row.setdefault("cpu_us_per_request", []).append(cpu / max(load.requests, 1) * 1e6)
                    row.setdefault("errors", []).append(float(latency.errors + load.errors))
                    print(name, latency, load, f"cpu {cpu:.2f}s", file=sys.stderr)
        finally:
            for process, _ in servers.values():
                process.stop()
    medians = {
        name: {key: statistics.median(values) for key, values in row.items()} for name, row in results.items()
    }
    out = ROOT / "benchmarks" / "results" / "gateway_servers.json"
    out.write_text(json.dumps({"rounds": results, "medians": medians}, indent=1) + "\n")
    lines = [
        "# Which ASGI server the gateway runs on",
        "",
        f"`python -m benchmarks.gateway_servers`, {started}, {ROUNDS} alternating rounds; load average "
        f"{load_before} at the start, {_loadavg()} at the end, on 2 cores shared with other work. "
        "The same app, one worker each, in front of the same loopback upstream; wrk with unique bodies.",
        "",
        "| server | added p50 (1 connection) | added p99 | requests/s (32 connections) "
        "| gateway CPU per request |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        median = medians[name]
        lines.append(
            f"| {name} | {median['added_p50_us']:.0f} µs | {median['added_p99_us']:.0f} µs | "
            f"{median['rate']:.0f} | {median['cpu_us_per_request']:.0f} µs |"
        )
    lines += [
        "",
        f"The upstream directly: p50 {medians['direct']['p50_us']:.0f} µs, "
        f"p99 {medians['direct']['p99_us']:.0f} µs.",
    ]
    table = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "gateway_servers.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
