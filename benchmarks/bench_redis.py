"""Fleet-wide coalescing through Redis: upstream calls, follower latency, and overhead.

Run from the repository root: ``python -m benchmarks.bench_redis``. Writes
``benchmarks/results/redis.json`` and prints a Markdown table. Takes well under two minutes.

What it measures:

* 8 worker processes x 100 concurrent identical requests per round, against a loopback
  server that holds its answer until every process has joined: upstream calls per round
  (target: 1).
* A follower's added latency: per round, when each follower process got its first
  response minus when the leader process got its first (one system-wide monotonic
  clock). Measured with 100 callers per process, and with 1 (the cost of the hand-over
  itself, without 100 callers per process competing for 2 cores).
* The non-coalescing path (a unique key per request, one request at a time): latency
  with the Redis backend against the in-memory transport.

By default it starts a private ``redis-server`` (nothing on disk), so other users of a
shared Redis do not add noise; ``--redis URL`` uses an existing one instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.server import LocalServer
from httpx_coalesce.redis import RedisBackend

from .workers import WorkerProcess, emit, workers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "redis.json"
PAYLOAD = {
    "model": "bench",
    "messages": [{"role": "user", "content": "the same question, asked by everyone"}],
}
ANSWER = json.dumps({"answer": "x" * 1000}).encode()


# -- the upstream ----------------------------------------------------------------------


class Upstream:
    """Counts calls; holds answers at a gate until every process has joined."""

    def __init__(self) -> None:
        self.hits = 0
        self.gate = threading.Event()
        self.gate.set()
        self.app = Starlette(routes=[Route("/answer", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> Response:
        await request.body()
        self.hits += 1
        while not self.gate.is_set():
            await anyio.sleep(0.0002)
        return Response(ANSWER, media_type="application/json")


# -- a worker process ------------------------------------------------------------------


async def worker(config: dict[str, Any]) -> None:
    backend = RedisBackend.from_url(config["redis"], prefix=config["prefix"], client_name=config["name"])
    fleet = CoalescingTransport(backend=backend)
    local = CoalescingTransport()
    url = config["url"]
    async with httpx.AsyncClient(transport=fleet) as client, httpx.AsyncClient(transport=local) as alone:
        # Connections to the server and to Redis are made before anything is timed.
        await client.post(f"{url}?warm={config['name']}", json=PAYLOAD)
        emit("ready")
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            command: dict[str, Any] = json.loads(line) if line else {"cmd": "quit"}
            if command["cmd"] == "round":
                await one_round(client, fleet, url, command["callers"])
            elif command["cmd"] == "unique":
                await unique_keys(client, alone, url, command["count"])
            else:
                return


async def one_round(
    client: httpx.AsyncClient, transport: CoalescingTransport, url: str, callers: int
) -> None:
    led = transport.stats().redis_led
    done: list[int] = []
    failures = 0

    async def call() -> None:
        nonlocal failures
        response = await client.post(url, json=PAYLOAD)
        done.append(time.monotonic_ns())
        if response.status_code != 200 or response.content != ANSWER:
            failures += 1

    async with anyio.create_task_group() as group:
        for _ in range(callers):
            group.start_soon(call)
        while transport.stats().waiters < callers:
            await anyio.sleep(0.0005)
        emit("joined")
    emit("round", done=done, led=transport.stats().redis_led - led, failures=failures)


async def unique_keys(fleet: httpx.AsyncClient, alone: httpx.AsyncClient, url: str, count: int) -> None:
    timings: dict[str, list[float]] = {"redis": [], "memory": []}
    # Pairs, one request of each path after the other: drift on a shared machine hits
    # both alike, and the paired difference cancels it.
    for number in range(count):
        for name, client in (("memory", alone), ("redis", fleet)):
            started = time.perf_counter_ns()
            response = await client.post(f"{url}?{name}={number}", json=PAYLOAD)
            timings[name].append((time.perf_counter_ns() - started) / 1e6)
            assert response.status_code == 200
    emit("unique", **timings)


# -- the coordinator -------------------------------------------------------------------


def blocked(client: redis.Redis, name: str) -> int:
    return sum(
        1 for entry in client.client_list() if entry.get("name") == name and "b" in entry.get("flags", "")
    )


def until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        time.sleep(0.0005)


def fleet_rounds(
    processes: list[WorkerProcess],
    upstream: Upstream,
    observer: redis.Redis,
    name: str,
    callers: int,
    rounds: int,
) -> dict[str, Any]:
    first_added: list[float] = []
    median_added: list[float] = []
    leader_first: list[float] = []
    calls: list[int] = []
    failures = 0
    for _ in range(rounds):
        upstream.hits = 0
        upstream.gate.clear()
        for process in processes:
            process.send(cmd="round", callers=callers)
        for process in processes:
            process.expect("joined")
        until(lambda: upstream.hits >= 1 and blocked(observer, name) >= len(processes) - 1)
        released = time.monotonic_ns()
        upstream.gate.set()
        results = [process.expect("round") for process in processes]
        calls.append(upstream.hits)
        failures += sum(result["failures"] for result in results)
        leaders = [index for index, result in enumerate(results) if result["led"]]
        if len(leaders) != 1:
            continue
        # When each process had its first response, and its median caller had one.
        firsts = [min(result["done"]) for result in results]
        medians = [statistics.median(result["done"]) for result in results]
        leader = leaders[0]
        leader_first.append((firsts[leader] - released) / 1e6)
        for index in range(len(results)):
            if index != leader:
                first_added.append((firsts[index] - firsts[leader]) / 1e6)
                median_added.append((medians[index] - medians[leader]) / 1e6)
    return {
        "processes": len(processes),
        "callers_per_process": callers,
        "rounds": rounds,
        "upstream_calls_per_round": {"max": max(calls), "mean": statistics.fmean(calls)},
        "failed_requests": failures,
        "leader_first_response_ms": summary(leader_first),
        "follower_added_latency_ms": summary(first_added),
        "follower_added_latency_median_caller_ms": summary(median_added),
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "samples": len(ordered),
    }


def start_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    if shutil.which("redis-server") is None:
        return "redis://127.0.0.1:6379/0", None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    until(lambda: _pings(client), timeout=10)
    client.close()
    return url, server


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def table(results: dict[str, Any]) -> str:
    crowd, pair = results["fleet_100_callers"], results["fleet_1_caller"]
    unique = results["unique_keys"]
    rows = [
        (
            "Upstream calls per round, 8 processes x 100 callers (max)",
            f"{crowd['upstream_calls_per_round']['max']}",
        ),
        (
            "Follower added latency, 100 callers/process (median / p99)",
            f"{crowd['follower_added_latency_ms']['median']} / "
            f"{crowd['follower_added_latency_ms']['p99']} ms",
        ),
        (
            "Same, by each process's median caller (median / p99)",
            f"{crowd['follower_added_latency_median_caller_ms']['median']} / "
            f"{crowd['follower_added_latency_median_caller_ms']['p99']} ms",
        ),
        (
            "Follower added latency, 1 caller/process (median / p99)",
            f"{pair['follower_added_latency_ms']['median']} / {pair['follower_added_latency_ms']['p99']} ms",
        ),
        (
            "Unique keys: in-memory vs Redis backend (median)",
            f"{unique['memory_ms']['median']} vs {unique['redis_ms']['median']} ms",
        ),
        (
            "Unique keys: added per request (median), ratio",
            f"{unique['added_ms']['median']} ms, x{unique['ratio']}",
        ),
    ]
    lines = ["| Measure | Result |", "| --- | --- |"]
    lines += [f"| {measure} | {result} |" for measure, result in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis", help="use this Redis instead of starting a private redis-server")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--unique", type=int, default=400, help="requests per path for the unique-key test")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(json.loads(args.worker)))
        return

    started = time.monotonic()
    redis_url, redis_process = (args.redis, None) if args.redis else start_redis()
    upstream = Upstream()
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    name = f"{prefix}worker"
    observer = redis.Redis.from_url(redis_url)
    try:
        with LocalServer(upstream.app) as server:
            config = {"redis": redis_url, "prefix": prefix, "name": name, "url": f"{server.url}/answer"}
            with workers("benchmarks.bench_redis", config, args.processes, "ready") as processes:
                crowd = fleet_rounds(processes, upstream, observer, name, args.callers, args.rounds)
                pair = fleet_rounds(processes, upstream, observer, name, 1, args.rounds)
                processes[0].send(cmd="unique", count=args.unique)
                unique = processes[0].expect("unique")
    finally:
        observer.close()
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait()

    memory, fleet = summary(unique["memory"]), summary(unique["redis"])
    paired = summary(
        [redis_ms - memory_ms for memory_ms, redis_ms in zip(unique["memory"], unique["redis"], strict=True)]
    )
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "redis": "private redis-server" if redis_process is not None else redis_url,
        },
        "fleet_100_callers": crowd,
        "fleet_1_caller": pair,
        "unique_keys": {
            "requests_per_path": args.unique,
            "memory_ms": memory,
            "redis_ms": fleet,
            "added_ms": paired,
            "ratio": round(fleet["median"] / memory["median"], 2),
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)} in {results['seconds']} s")


if __name__ == "__main__":
    main()
