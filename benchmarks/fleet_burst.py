"""The fleet at scale: bursts across processes, and what each flight costs Redis.

Run from the repository root: ``python -m benchmarks.fleet_burst`` (a few minutes on 2
cores). Starts a private ``redis-server`` (nothing on disk, default ``maxclients``), a
loopback upstream whose answer takes ``ANSWER_SECONDS`` (an LLM call, not a cache hit),
and worker processes that fire their whole burst at once. Side by side with no backend
(every process alone). Per row: upstream calls, flights that failed open (Redis trouble:
``redis_errors``), failed requests, p50/p99 latency, Redis connections opened, refused
(``rejected_connections``) and the most open at once, commands (``INFO commandstats``)
and round trips (client-side: one per command or pipeline sent) per flight, and Redis's
memory peak. Writes ``benchmarks/results/fleet_burst.json``.

``run_burst()`` is what tests/redis/test_burst.py runs, at a small size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fleet_burst.json"
ANSWER_SECONDS = 1.0
EVENTS = 4


class Upstream:
    """Counts calls; answers after ANSWER_SECONDS, whole (/answer) or as SSE (/sse)."""

    def __init__(self, seconds: float) -> None:
        self.hits = 0
        self._lock = threading.Lock()
        self._seconds = seconds
        self.app = Starlette(
            routes=[
                Route("/answer", self.answer, methods=["POST"]),
                Route("/sse", self.sse, methods=["POST"]),
            ]
        )

    def _hit(self) -> None:
        with self._lock:
            self.hits += 1

    async def answer(self, request: Request) -> Response:
        body = await request.body()
        self._hit()
        await anyio.sleep(self._seconds)
        return Response(b'{"answer": "' + body[:64].hex().encode() + b'"}', media_type="application/json")

    async def sse(self, request: Request) -> StreamingResponse:
        await request.body()
        self._hit()

        async def events() -> Any:
            for number in range(EVENTS):
                await anyio.sleep(self._seconds / EVENTS)
                yield b'data: {"n": %d}\n\n' % number
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


# -- a worker process ------------------------------------------------------------------


class RoundTrips:
    """Counts what redis-py sends: one command, or one whole pipeline, per send."""

    def __init__(self) -> None:
        self.count = 0
        import redis.asyncio.connection
        import redis.connection

        for cls in (redis.connection.AbstractConnection, redis.asyncio.connection.AbstractConnection):
            self._wrap(cls)

    def _wrap(self, cls: Any) -> None:
        original = cls.send_packed_command
        counter = self

        if redis.asyncio.connection.AbstractConnection is cls:

            async def counted_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                counter.count += 1
                return await original(self, *args, **kwargs)

            cls.send_packed_command = counted_async  # type: ignore[method-assign]
        else:

            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                counter.count += 1
                return original(self, *args, **kwargs)

            cls.send_packed_command = counted


class Troubles:
    """Why flights failed open: each Redis trouble the backend reported, by the
    operation that met it (the innermost frame of ours in its traceback) and the
    error's first words; and flights that skipped Redis while the breaker was open."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        from httpx_coalesce._stats import Counters
        from httpx_coalesce.redis import _backend

        original_report = _backend.RedisBackend._report
        original_error = Counters.backend_error
        tally = self

        def report(backend: Any, trouble: Any) -> None:
            caller = sys._getframe(1).f_code
            if caller.co_name == "report":
                caller = sys._getframe(2).f_code
            origin = f"{Path(caller.co_filename).stem}.{caller.co_name}"
            tally.add(f"{origin} | {_where(trouble)}: {str(trouble)[:60]}")
            original_report(backend, trouble)

        def backend_error(counters: Any, kind: str) -> None:
            if kind == "backoff":
                tally.add("breaker open: skipped Redis")
            original_error(counters, kind)

        _backend.RedisBackend._report = report  # type: ignore[method-assign,assignment]
        Counters.backend_error = backend_error  # type: ignore[method-assign,assignment]

    def add(self, why: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1


def _where(error: BaseException) -> str:
    frames = []
    cause: BaseException | None = error
    while cause is not None:
        tb = cause.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code)
            tb = tb.tb_next
        cause = cause.__cause__
    ours = [code for code in frames if "httpx_coalesce" in code.co_filename]
    names = [f"{Path(code.co_filename).stem}.{code.co_name}" for code in ours]
    return " > ".join(dict.fromkeys(names[-3:])) or "?"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def worker(config: dict[str, Any]) -> None:
    from httpx_coalesce.redis import RedisBackend

    trips = RoundTrips()
    troubles = Troubles()
    backend = None
    if config["redis"]:
        backend = RedisBackend.from_url(
            config["redis"],
            prefix=config["prefix"],
            client_name=config["name"],
            socket_timeout=config["timeout"],
            socket_connect_timeout=config["timeout"],
        )
    # An inner transport without a connection cap: with no backend every process sends
    # all its keys upstream at once, and a pool of 100 would queue them.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    transport = CoalescingTransport(httpx.AsyncHTTPTransport(limits=limits), backend=backend)
    latencies: list[float] = []
    failures: list[str] = []
    path = "/sse" if config["streamed"] else "/answer"
    async with httpx.AsyncClient(transport=transport, timeout=60.0) as client:
        if config["warm"]:
            # Connections to Redis and the upstream opened before the burst, as in a process
            # that has served before: the burst then measures the backend, not cold connects
            # on an event loop too busy to finish them within the 0.25 s connect timeout.
            await client.post(f"{config['url']}{path}", json={"warm": config["name"], "pid": os.getpid()})
        emit("ready")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        trips.count = 0
        troubles.counts.clear()

        async def call(key: int) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(f"{config['url']}{path}", json={"key": f"{config['run']}-{key}"})
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
                else:
                    latencies.append(time.perf_counter() - started)
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")

        lag = 0.0
        bursting = True

        async def watch_lag() -> None:
            # How late the event loop runs a timer: how long one of its turns took.
            nonlocal lag
            while bursting:
                asked = time.perf_counter()
                await anyio.sleep(0.05)
                lag = max(lag, time.perf_counter() - asked - 0.05)

        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_lag)
            async with anyio.create_task_group() as group:
                for key in range(config["keys"]):
                    for _ in range(config["callers"]):
                        group.start_soon(call, key)
            bursting = False
    stats = transport.stats()
    transport.close()
    emit(
        "done",
        latencies=latencies,
        failures=failures[:5],
        failed=len(failures),
        redis_errors=stats.redis_errors,
        redis_led=stats.redis_led,
        round_trips=trips.count,
        troubles=troubles.counts,
        loop_lag=lag,
    )


# -- the coordinator -------------------------------------------------------------------


class Process:
    def __init__(self, config: dict[str, Any], pythonpath: str | None) -> None:
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.process = subprocess.Popen(
            # Run as a script, not with -m: the repository root is then not first on the path,
            # so --pythonpath can put another version of httpx_coalesce before this one.
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def expect(self, event: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        message: dict[str, Any] = json.loads(line)
        if message["event"] != event:
            raise RuntimeError(f"expected {event}, got {message}")
        return message

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _commands(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    # Only what the backend sends: not the observer's own INFO / CONFIG / CLIENT calls.
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config", "cmdstat_client", "cmdstat_ping"))
    )


def run_burst(
    redis_url: str | None,
    *,
    processes: int,
    keys: int,
    callers: int,
    streamed: bool = False,
    seconds: float = ANSWER_SECONDS,
    pythonpath: str | None = None,
    warm: bool = False,
    timeout: float = 0.25,
) -> dict[str, Any]:
    """One burst: *processes* workers, each *keys* distinct requests x *callers*, at once.

    The Redis at *redis_url* should be private: its statistics are reset and read.
    """
    upstream = Upstream(seconds)
    observer = redis.Redis.from_url(redis_url) if redis_url else None
    peak_clients = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak_clients
        assert observer is not None
        while not sampling.is_set():
            peak_clients = max(peak_clients, int(observer.info("clients")["connected_clients"]) - 1)
            sampling.wait(0.02)

    with LocalServer(upstream.app) as server:
        run = uuid.uuid4().hex[:8]
        configs = [
            {
                "redis": redis_url,
                "prefix": f"burst:{run}:",
                "name": f"burst-{run}",
                "url": server.url,
                "keys": keys,
                "callers": callers,
                "streamed": streamed,
                "run": run,
                "warm": warm,
                "timeout": timeout,
            }
            for _ in range(processes)
        ]
        workers = [Process(config, pythonpath) for config in configs]
        try:
            for process in workers:
                process.expect("ready")
            upstream.hits = 0
            sampler = None
            if observer is not None:
                observer.config_resetstat()
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                before = observer.info("stats")
            started = time.perf_counter()
            for process in workers:
                process.go()
            dones = [process.expect("done") for process in workers]
            elapsed = time.perf_counter() - started
        finally:
            for process in workers:
                process.stop()
            sampling.set()
    latencies = sorted(latency for done in dones for latency in done["latencies"])
    result: dict[str, Any] = {
        "processes": processes,
        "keys": keys,
        "callers": callers,
        "streamed": streamed,
        "warm": warm,
        "backend": "redis" if redis_url else "none",
        "upstream_calls": upstream.hits,
        "fail_open": sum(done["redis_errors"] for done in dones),
        "failed": sum(done["failed"] for done in dones),
        "failures": [failure for done in dones for failure in done["failures"]][:5],
        "fail_open_why": _merged(done.get("troubles", {}) for done in dones),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "seconds": round(elapsed, 2),
        "loop_lag_max_ms": round(1000 * max(done["loop_lag"] for done in dones)),
        "load_average": round(os.getloadavg()[0], 1),
    }
    if observer is not None:
        after = observer.info("stats")
        # Per fleet-wide request (a key), whether it took one flight or, failing open, more.
        flights = keys
        result.update(
            connections_opened=int(after["total_connections_received"])
            - int(before["total_connections_received"]),
            refused=int(after["rejected_connections"]) - int(before["rejected_connections"]),
            peak_connections=peak_clients,
            commands_per_flight=round(_commands(observer) / flights, 1),
            round_trips_per_flight=round(sum(done["round_trips"] for done in dones) / flights, 1),
            memory_peak_mb=round(int(observer.info("memory")["used_memory_peak"]) / 2**20, 1),
            commands={
                name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in observer.info("commandstats").items()
            },
        )
        for key in observer.scan_iter(match=f"burst:{run}:*", count=1000):
            observer.delete(key)
        observer.close()
    return result


def _merged(tallies: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for tally in tallies:
        for why, count in tally.items():
            merged[why] = merged.get(why, 0) + count
    return dict(sorted(merged.items(), key=lambda item: -item[1]))


def start_redis() -> tuple[str, subprocess.Popen[bytes]]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return url, process


ROWS = [
    # (processes, keys, callers, streamed)
    (8, 1, 100, False),
    (8, 1, 100, True),
    (8, 500, 10, False),
    (8, 2000, 1, False),
]


def table(rows: list[dict[str, Any]]) -> str:
    columns: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
        (
            "burst",
            lambda r: f"{r['processes']}x{r['keys']}x{r['callers']} {'SSE' if r['streamed'] else 'JSON'}",
        ),
        ("backend", lambda r: r["backend"]),
        ("calls", lambda r: r["upstream_calls"]),
        ("fail-open", lambda r: r["fail_open"]),
        ("failed", lambda r: r["failed"]),
        ("p50 ms", lambda r: r["p50_ms"]),
        ("p99 ms", lambda r: r["p99_ms"]),
        ("conns opened", lambda r: r.get("connections_opened", "")),
        ("refused", lambda r: r.get("refused", "")),
        ("peak conns", lambda r: r.get("peak_connections", "")),
        ("cmds/flight", lambda r: r.get("commands_per_flight", "")),
        ("round trips/flight", lambda r: r.get("round_trips_per_flight", "")),
        ("mem peak MB", lambda r: r.get("memory_peak_mb", "")),
    ]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(get(row)) for _, get in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", default="all", help="comma-separated row numbers (0-based), or all")
    parser.add_argument("--pythonpath", help="import httpx_coalesce from here (to measure another version)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the rows without a backend")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="connect before the burst: the commands and round trips of the protocol alone",
    )
    parser.add_argument(
        "--burst",
        action="append",
        metavar="PxKxC",
        help="P processes x K keys x C callers instead of --rows (repeatable; a trailing s: SSE)",
    )
    args = parser.parse_args()
    if args.worker:
        anyio.run(worker, json.loads(args.worker))
        return
    chosen = ROWS if args.rows == "all" else [ROWS[int(n)] for n in args.rows.split(",")]
    if args.burst:
        chosen = []
        for burst in args.burst:
            processes, keys, callers = (int(n) for n in burst.rstrip("s").split("x"))
            chosen.append((processes, keys, callers, burst.endswith("s")))
    url, server = start_redis()
    results: list[dict[str, Any]] = []
    try:
        for processes, keys, callers, streamed in chosen:
            backends: list[str | None] = [url] if args.no_baseline else [None, url]
            for backend in backends:
                row = run_burst(
                    backend,
                    processes=processes,
                    keys=keys,
                    callers=callers,
                    streamed=streamed,
                    pythonpath=args.pythonpath,
                    warm=args.warm,
                )
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        server.kill()
    print(table(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
