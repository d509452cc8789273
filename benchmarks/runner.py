"""One benchmark run, start to finish: the server, every comparison, the report.

Order: the target figures first (overhead, the 10,000-caller stampede, streaming), so
they always get their full rounds, then the contender comparisons, then the profile.
A time budget guards the whole: past most of it, the remaining comparisons get fewer
rounds, and the results say so.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import overhead, report, streaming
from .contenders import REFERENCE, Contender, ContenderSpec, registry
from .drive import Sample, drive_posts, traced_peak
from .hotspots import profile_followers, profile_overhead
from .rounds import alternate
from .server import BenchServer
from .summary import WorkloadRuns, summarise
from .workloads import LATENCY, Workload, chat_payload
from .workloads import plan as workload_plan

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Budget:
    """Wall-clock budget of the run; past 75 % of it, comparisons get two rounds."""

    seconds: float
    notes: list[str]
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rounds(self, planned: int, what: str) -> int:
        if planned > 2 and self.elapsed > 0.75 * self.seconds:
            self.notes.append(
                f"{what}: {planned} rounds planned, 2 run (time budget; machine slower than planned)."
            )
            return 2
        return planned

    def log(self, message: str) -> None:
        print(f"[{self.elapsed:5.0f}s] {message}", file=sys.stderr, flush=True)


def _select(
    specs: list[ContenderSpec], workload: str, skip: dict[str, str]
) -> tuple[list[ContenderSpec], dict[str, str]]:
    active, skipped = [], {}
    for spec in specs:
        reason = skip.get(spec.name) or spec.skips.get(workload)
        if reason:
            skipped[spec.name] = reason
        else:
            active.append(spec)
    return active, skipped


async def _close(contenders: dict[str, Contender]) -> None:
    for contender in contenders.values():
        await contender.aclose()


async def run_posts(
    workload: Workload, specs: list[ContenderSpec], server: BenchServer, rounds: int
) -> WorkloadRuns:
    active, skipped = _select(specs, workload.name, workload.skip)
    contenders = {spec.name: spec.make() for spec in active}
    timed = [name for name in contenders if name not in workload.memory_only]
    url = server.url + workload.path
    payloads, concurrency = workload.payloads, workload.concurrency
    try:
        warm = payloads[: min(20, len(payloads))]
        for contender in contenders.values():
            await drive_posts(contender, url, warm, concurrency)

        async def one(name: str) -> Sample:
            before = await server.hits()
            sample, _ = await drive_posts(contenders[name], url, payloads, concurrency)
            sample.upstream = await server.hits() - before
            return sample

        samples = await alternate(timed, rounds, one)
        memory: dict[str, Sample] = {}
        if workload.memory:
            for name, contender in contenders.items():
                before = await server.hits()

                async def traced(contender: Contender = contender) -> tuple[Sample, list[Any]]:
                    return await drive_posts(contender, url, payloads, concurrency)

                peak, (sample, _) = await traced_peak(traced)
                sample.peak_memory = peak
                sample.upstream = await server.hits() - before
                memory[name] = sample
    finally:
        await _close(contenders)
    return WorkloadRuns(
        name=workload.name,
        title=workload.title,
        kind="post",
        callers=workload.callers,
        ideal_upstream=workload.ideal_upstream,
        rounds=rounds,
        labels={spec.name: spec.label for spec in specs},
        samples=samples,
        memory=memory,
        skipped={**skipped, **{name: workload.memory_only[name] for name in contenders if name not in timed}},
        params={"path": workload.path, "concurrency": workload.concurrency, "latency_s": LATENCY},
    )


async def run_streams(
    stream_plan: streaming.StreamPlan, specs: list[ContenderSpec], server: BenchServer, rounds: int
) -> WorkloadRuns:
    name = "sse"
    active, skipped = _select(specs, name, stream_plan.skip)
    contenders = {spec.name: spec.make() for spec in active}
    shape = stream_plan.shape
    url = f"{server.url}/v1/stream?{shape.query(LATENCY)}"
    payload = chat_payload("stream")
    try:
        for contender in contenders.values():
            await streaming.drive_streams(contender, url, 5, chat_payload("warm"))

        async def one(contender_name: str) -> Sample:
            before = await server.hits()
            sample = await streaming.drive_streams(
                contenders[contender_name], url, stream_plan.callers, payload
            )
            sample.upstream = await server.hits() - before
            return sample

        samples = await alternate(list(contenders), rounds, one)
        # The same stream to a few callers: a follower's first byte against the leader's
        # when the loop is not also taking turns among a thousand readers.
        small: dict[str, list[float]] = {}
        for contender_name, contender in contenders.items():
            if contender_name.startswith("ours"):
                for _ in range(streaming.SMALL_FANOUT_ROUNDS):
                    sample = await streaming.drive_streams(contender, url, streaming.SMALL_FANOUT, payload)
                    gap = (sample.extra or {}).get("follower_minus_leader_p50")
                    if gap is not None:
                        small.setdefault(contender_name, []).append(gap)
        memory: dict[str, Sample] = {}
        baseline: dict[str, Sample] = {}
        # A one-event stream to the same callers: what they hold whatever the stream's
        # size, so the peak can be split into per-caller state and stream data.
        tiny = streaming.StreamShape(1, shape.event_bytes, 0.0)
        tiny_url = f"{server.url}/v1/stream?{tiny.query(LATENCY)}"
        for contender_name, contender in contenders.items():
            if contender_name in stream_plan.memory_skip:
                continue
            for target, into in ((url, memory), (tiny_url, baseline)):
                before = await server.hits()

                async def traced(contender: Contender = contender, target: str = target) -> Sample:
                    return await streaming.drive_streams(contender, target, stream_plan.callers, payload)

                peak, sample = await traced_peak(traced)
                sample.peak_memory = peak
                sample.upstream = await server.hits() - before
                into[contender_name] = sample
    finally:
        await _close(contenders)
    return WorkloadRuns(
        name=name,
        title=f"an SSE stream of {shape.events:,} events (~{shape.event_bytes:,} B each) shared by "
        f"{stream_plan.callers:,} callers",
        kind="stream",
        callers=stream_plan.callers,
        ideal_upstream=1,
        rounds=rounds,
        labels={spec.name: spec.label for spec in specs},
        samples=samples,
        memory=memory,
        memory_baseline=baseline,
        skipped={
            **skipped,
            **{n: f"memory: {why}" for n, why in stream_plan.memory_skip.items() if n in contenders},
        },
        params={
            "events": shape.events,
            "event_bytes": shape.event_bytes,
            "gap_s": shape.gap,
            "first_event_after_s": LATENCY,
            "streams_live": {spec.name: spec.streams_live for spec in active},
            "small_fanout": {"callers": streaming.SMALL_FANOUT, "follower_minus_leader_p50": small},
        },
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    # Read-only: which commit was measured, and whether httpx_coalesce/ had changes on top of it.
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _meta(quick: bool, budget: Budget) -> dict[str, Any]:
    dirty = _git("status", "--porcelain", "--", "httpx_coalesce")
    return {
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "src_modified": bool(dirty) if dirty is not None else None,
        "versions": {
            name: _version(name)
            for name in (
                "httpx-coalesce",
                "httpx",
                "httpx2",
                "httpcore",
                "anyio",
                "coalescer",
                "aiocoalesce",
                "uvicorn",
            )
        },
        "latency_s": LATENCY,
        "reference": REFERENCE,
        "budget_s": budget.seconds,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark CoalescingTransport against plain httpx and function-level coalescers.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run with small sizes")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    parser.add_argument(
        "--page",
        "--readme",
        dest="readme",
        type=Path,
        default=None,
        help="page whose bench markers to fill (default: docs/benchmarks.md; none with --quick)",
    )
    parser.add_argument("--no-readme", action="store_true", help="leave the benchmarks page alone")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default: 540 full, 120 quick)")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        help="run only these parts (overhead, stampede, sse, workloads, hotspots); repeatable",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quick: bool = args.quick
    notes: list[str] = []
    budget = Budget(args.budget or (120.0 if quick else 540.0), notes)
    parts = set(args.only or ["overhead", "stampede", "sse", "workloads", "hotspots"])
    specs = registry(notes)
    results: dict[str, Any] = {"meta": _meta(quick, budget), "targets": {}, "workloads": [], "notes": notes}
    overhead_plan = overhead.plan(quick)
    with BenchServer() as server:
        if "overhead" in parts:
            budget.log("overhead of the path that does not coalesce")
            results["targets"]["overhead"] = asyncio.run(overhead.measure_overhead(overhead_plan, server.url))
        if "stampede" in parts:
            budget.log(f"{overhead_plan.stampede:,} concurrent identical requests, in process")
            results["targets"]["stampede"] = asyncio.run(overhead.measure_stampede(overhead_plan))
        if "sse" in parts:
            stream_plan = streaming.plan(quick)
            budget.log(f"SSE: {stream_plan.shape.events:,} events to {stream_plan.callers:,} callers")
            rounds = budget.rounds(stream_plan.rounds, "sse")
            results["workloads"].append(
                summarise(asyncio.run(run_streams(stream_plan, specs, server, rounds)))
            )
        if "workloads" in parts:
            default_rounds = 2 if quick else 5
            for workload in workload_plan(quick):
                rounds = budget.rounds(min(workload.rounds or default_rounds, default_rounds), workload.name)
                budget.log(f"{workload.title} ({rounds} rounds)")
                results["workloads"].append(
                    summarise(asyncio.run(run_posts(workload, specs, server, rounds)))
                )
    if "hotspots" in parts:
        budget.log("profile of our unique-key path")
        requests = 300 if quick else 3000
        results["hotspots"] = {"unique": profile_overhead(requests), "followers": profile_followers(requests)}
    results["meta"]["duration_s"] = round(budget.elapsed, 1)
    results["meta"]["load_average_at_end"] = list(os.getloadavg())
    # A smoke run must not overwrite the published results or the benchmarks page's table.
    out: Path = args.out or (RESULTS / "quick" if quick else RESULTS)
    readme: Path | None = args.readme or (None if quick else ROOT / "docs" / "benchmarks.md")
    for other in sorted(out.glob("*.json")):
        if other.name != "results.json":
            # Written by the separate benchmarks (bench_redis, bench_sdk); left as they are.
            notes.append(f"Also in {out.name}/: {other.name}, from another benchmark of this directory.")
    written = report.write_all(results, out, None if args.no_readme else readme)
    for path in written:
        budget.log(f"wrote {path}")
    return 0
