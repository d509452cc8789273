"""The fleet under Redis faults: upstream calls, errors and p50, beside no backend.

Run from the repository root: ``python -m benchmarks.bench_faults`` (``--small`` for a
busy machine). Writes ``benchmarks/results/faults.json`` and ``faults.md``.

Each row is one run of ``processes`` worker processes x ``callers`` callers x ``keys``
keys, all arriving at once, against a loopback upstream that holds its answers at a
gate (a streamed answer sends its first event, then waits). Once every caller waits
(streamed: has its first event), the coordinator injects the fault into a private
redis-server it started (behind a TCP proxy), heals it, and opens the gate. Ideal:
``keys`` upstream calls with Redis, ``processes x keys`` without. The faults are the
issue's: a restart after 0.5 s (nothing persisted), ``CLIENT PAUSE 5000``, every
connection reset, a 3 s blackhole, eviction of every key of ours under ``maxmemory``;
and two failovers, each on a topology of its own (the tests' servers): a Redis Cluster
of 3 masters and 3 replicas (node timeout 1 s) whose master owning a key's slot is
SIGKILLed, and Sentinel (1 master, 1 replica, 3 sentinels, down-after 1 s) whose master
is SIGKILLed; the gate opens once the replica is promoted and serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.server import LocalServer
from httpx_coalesce.redis import RedisBackend

from .workers import emit, workers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
TABLE = ROOT / "benchmarks" / "results" / "faults.md"
ANSWER = json.dumps({"answer": "x" * 1000}).encode()
EVENTS = [b'data: {"n":%d}\n\n' % n for n in range(5)] + [b"data: [DONE]\n\n"]


class Upstream:
    """Counts calls; holds answers (after a stream's first event) at a gate."""

    def __init__(self) -> None:
        self.hits = 0
        #: Calls by key: the target is at most one extra call per key per fault.
        self.by_key: Counter[str] = Counter()
        self.gate = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/buffered/{key}", self.buffered, methods=["POST"]),
                Route("/streamed/{key}", self.sse, methods=["POST"]),
            ]
        )

    async def _wait(self) -> None:
        while not self.gate.is_set():
            await anyio.sleep(0.002)

    async def buffered(self, request: Request) -> Response:
        await request.body()
        self.hits += 1
        self.by_key[request.path_params["key"]] += 1
        await self._wait()
        return Response(ANSWER, media_type="application/json")

    async def sse(self, request: Request) -> StreamingResponse:
        await request.body()
        self.hits += 1
        self.by_key[request.path_params["key"]] += 1

        async def events() -> Any:
            yield EVENTS[0]
            await self._wait()
            for event in EVENTS[1:]:
                yield event

        return StreamingResponse(events(), media_type="text/event-stream")


# -- a worker process ------------------------------------------------------------------


async def worker(config: dict[str, Any]) -> None:
    backend = None
    if config["redis"]:
        backend = RedisBackend.from_url(
            config["redis"], prefix=config["prefix"], client_name=config["name"], cluster=config["cluster"]
        )
    transport = CoalescingTransport(backend=backend)
    streamed = config["mode"] == "streamed"
    expected = b"".join(EVENTS) if streamed else ANSWER
    total = config["callers"] * config["keys"]
    results: list[tuple[float, str | None]] = []
    firsts = 0
    async with httpx.AsyncClient(transport=transport, timeout=60.0) as client:

        async def call(key: int) -> None:
            nonlocal firsts
            started = time.monotonic()
            error: str | None = None
            body = b""
            try:
                url = f"{config['url']}/{config['mode']}/{key}"
                async with client.stream("POST", url, json={"k": key}) as response:
                    async for chunk in response.aiter_raw():
                        if not body:
                            firsts += 1
                        body += chunk
                if body != expected:
                    error = "WrongBody"
            except httpx.HTTPError as failure:
                error = type(failure).__name__
                logging.getLogger("bench").debug("caller failed: %r", failure)
            results.append((time.monotonic() - started, error))

        async with anyio.create_task_group() as group:
            for key in range(config["keys"]):
                for _ in range(config["callers"]):
                    group.start_soon(call, key)
            while (firsts if streamed else transport.stats().waiters) < total:
                await anyio.sleep(0.005)
            emit("waiting")
        emit("done", results=results, redis_errors=transport.stats().redis_errors)
        # A leader whose callers are done may still owe followers elsewhere what Redis
        # could not take: the process lives on, as a service would, until all are done.
        await anyio.to_thread.run_sync(sys.stdin.readline)


# -- the coordinator -------------------------------------------------------------------


def _fault_tools() -> tuple[Any, Any]:
    # The tests' fault tools: one TCP proxy and one redis-server starter for both.
    from tests.redis.faults import FaultProxy
    from tests.support.redis_server import RedisServer

    return FaultProxy, RedisServer


class Rig:
    """A private redis-server behind the tests' fault proxy."""

    cluster = False

    @property
    def url(self) -> str:
        return str(self.proxy.url)

    def __init__(self) -> None:
        proxy_class, self._server_class = _fault_tools()
        self.server = self._server_class()
        self.proxy = proxy_class(self.server.port)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=10)

    def close(self) -> None:
        self.proxy.close()
        self.server.kill()

    # The faults -----------------------------------------------------------------------

    def restart(self) -> None:
        self.server.kill()
        self.proxy.reset()
        time.sleep(0.5)
        self.server = self._server_class(self.server.port)

    def pause(self) -> None:
        client = self.client()
        client.client_pause(5000, all=True)
        client.close()
        time.sleep(5.0)

    def reset(self) -> None:
        self.proxy.reset()

    def blackhole(self) -> None:
        self.proxy.blackhole()
        time.sleep(3.0)
        self.proxy.heal()

    def evict(self) -> None:
        client = self.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "volatile-random")
        client.config_set("maxmemory", used + 256 * 1024)
        index = 0
        while any(client.scan_iter(match="bench*lease:*")) or any(client.scan_iter(match="bench*stream:*")):
            pipe = client.pipeline(transaction=False)
            for _ in range(64):
                pipe.set(f"filler:{index}", b"x" * 1024, ex=60)
                index += 1
            pipe.execute()
        client.config_set("maxmemory", 0)
        client.close()


class ClusterRig:
    """A Redis Cluster of the tests' own (tests/redis/servers.py), for its failover."""

    cluster = True

    def __init__(self) -> None:
        from tests.redis.servers import Cluster

        self._stack = contextlib.ExitStack()
        self.topology = self._stack.enter_context(Cluster.start(node_timeout_ms=1000))

    @property
    def url(self) -> str:
        return str(self.topology.url)

    def close(self) -> None:
        self._stack.close()

    def kill_a_master(self) -> None:
        """SIGKILL the master that owns the slot of the first key led; return once its
        replica is promoted and every slot is served."""
        with self.topology.client() as client:
            lease = next(client.scan_iter(match="bench*lease:*", target_nodes=client.PRIMARIES))
        self.topology.kill_master_of(lease.decode())


class SentinelRig:
    """Sentinel of the tests' own (tests/redis/servers.py), for its failover."""

    cluster = False

    def __init__(self) -> None:
        from tests.redis.servers import Sentinel

        self._stack = contextlib.ExitStack()
        self.topology = self._stack.enter_context(Sentinel.start())

    @property
    def url(self) -> str:
        addresses = ",".join(f"{host}:{port}" for host, port in self.topology.addresses)
        return f"redis+sentinel://{addresses}/{self.topology.service}/0"

    def close(self) -> None:
        self._stack.close()

    def fail_over(self) -> None:
        self.topology.master.kill()
        self.topology.wait_failed_over()


AnyRig = Rig | ClusterRig | SentinelRig

#: Each fault: the Redis it needs, and how to inject it (None: no fault).
FAULTS: dict[str, tuple[Callable[[], AnyRig], Callable[[Any], None] | None]] = {
    "no fault": (Rig, None),
    "restart after 0.5 s": (Rig, Rig.restart),
    "CLIENT PAUSE 5000": (Rig, Rig.pause),
    "connections reset": (Rig, Rig.reset),
    "3 s blackhole": (Rig, Rig.blackhole),
    "maxmemory eviction": (Rig, Rig.evict),
    "Cluster master killed": (ClusterRig, ClusterRig.kill_a_master),
    "Sentinel failover": (SentinelRig, SentinelRig.fail_over),
}


def run(fault: str, mode: str, with_redis: bool, args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    upstream_gate.clear()
    before = upstream.hits
    upstream.by_key.clear()
    make_rig, inject = FAULTS[fault]
    rig = make_rig() if with_redis else None
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    started = time.monotonic()
    try:
        config = {
            "redis": rig.url if rig else None,
            "cluster": rig.cluster if rig else False,
            "prefix": prefix,
            "name": f"{prefix}worker",
            "url": server_url,
            "mode": mode,
            "callers": args.callers,
            "keys": args.keys,
        }
        with workers("benchmarks.bench_faults", config, args.processes, "waiting") as processes:
            # Followers in other processes are blocked in Redis by now, or soon: the
            # fault must meet them there, not on their way in.
            time.sleep(0.3)
            if rig is not None and inject is not None:
                inject(rig)
            upstream_gate.set()
            dones = [process.expect("done") for process in processes]
    finally:
        if rig is not None:
            rig.close()
    results = [(elapsed, error) for done in dones for elapsed, error in done["results"]]
    errors = Counter(error for _, error in results if error is not None)
    return {
        "fault": fault,
        "mode": mode,
        "backend": "redis" if with_redis else "none",
        "callers": len(results),
        "upstream_calls": upstream.hits - before,
        "most_calls_for_a_key": max(upstream.by_key.values(), default=0),
        "errors": dict(errors),
        "p50_ms": round(statistics.median(elapsed for elapsed, _ in results) * 1000),
        "redis_errors": sum(done["redis_errors"] for done in dones),
        "seconds": round(time.monotonic() - started, 1),
    }


upstream = Upstream()
upstream_gate = upstream.gate


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ideal, alone = args.keys, args.keys * args.processes
    lines = [
        f"{args.processes} processes x {args.callers} callers x {args.keys} keys "
        f"(ideal: {ideal} upstream calls with Redis, {alone} without)",
        "",
        "| fault | answers | Redis: upstream calls | Redis: most for one key | Redis: errors | Redis: p50 ms "
        "| no backend: upstream calls | no backend: errors | no backend: p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(row["fault"], row["mode"], row["backend"]): row for row in rows}
    for fault in FAULTS:
        for mode in ("streamed", "buffered"):
            fleet, none = by[(fault, mode, "redis")], by[("no fault", mode, "none")]

            def errors(row: dict[str, Any]) -> str:
                return ", ".join(f"{count} {name}" for name, count in row["errors"].items()) or "0"

            lines.append(
                f"| {fault} | {mode} | {fleet['upstream_calls']} | {fleet['most_calls_for_a_key']} "
                f"| {errors(fleet)} | {fleet['p50_ms']} "
                f"| {none['upstream_calls']} | {errors(none)} | {none['p50_ms']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--small", action="store_true", help="2 processes x 5 callers x 3 keys")
    parser.add_argument("--only", help="run only the faults whose name contains this")
    parser.add_argument("--mode", choices=["streamed", "buffered"], help="run only this mode")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if os.environ.get("BENCH_DEBUG"):
            logging.basicConfig(level=logging.DEBUG, format=f"%(relativeCreated)d {os.getpid()} %(message)s")
            logging.getLogger("httpx").setLevel(logging.WARNING)
            logging.getLogger("httpcore").setLevel(logging.WARNING)
        asyncio.run(worker(json.loads(args.worker)))
        return
    if args.small:
        args.processes, args.callers, args.keys = 2, 5, 3

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with LocalServer(upstream.app) as server:
        for mode in ("streamed", "buffered"):
            if args.mode and mode != args.mode:
                continue
            # Without a backend a Redis fault changes nothing: one run is the baseline.
            rows.append(run("no fault", mode, False, args, server.url))
            for fault in FAULTS:
                if args.only and args.only not in fault:
                    continue
                rows.append(run(fault, mode, True, args, server.url))
                print(json.dumps(rows[-1]), flush=True)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load": os.getloadavg()[0],
        },
        "shape": {"processes": args.processes, "callers": args.callers, "keys": args.keys},
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if not (args.only or args.mode):
        TABLE.write_text(table(rows, args) + "\n")
        print(table(rows, args))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)} in {results['seconds']} s")


if __name__ == "__main__":
    main()
