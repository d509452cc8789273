"""Driving one contender through one workload, once, and what that run measured.

All callers start together (one task each, gathered) and each times its own call.
Wall time runs from the start to the last answer; CPU time is the client process's
(the server lives in another process); the upstream calls are the server's count.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .contenders import Contender
from .stats import percentile

__all__ = ["Sample", "drive_posts", "traced_peak"]

JSON = dict[str, Any]


@dataclass
class Sample:
    """One run of one contender through one workload."""

    wall: float
    cpu: float
    latencies: list[float] = field(repr=False)
    upstream: int = 0
    errors: int = 0
    #: Peak traced memory above idle, bytes (memory passes only).
    peak_memory: int | None = None
    #: Workload-specific figures (streaming lags, ...).
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.5) if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99) if self.latencies else float("nan")


async def drive_posts(
    contender: Contender, url: str, payloads: list[JSON], concurrency: int | None = None
) -> tuple[Sample, list[Any]]:
    """Every payload as one caller, all at once or at most *concurrency* at a time; the
    sample, and what the callers got (alive until the caller of this measured memory)."""
    gate = asyncio.Semaphore(concurrency or len(payloads) or 1)

    async def caller(payload: JSON) -> tuple[float, bytes]:
        async with gate:
            start = time.perf_counter()
            body = await contender.post(url, payload)
            return time.perf_counter() - start, body

    cpu_start = time.process_time()
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(caller(payload) for payload in payloads), return_exceptions=True)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    latencies = [outcome[0] for outcome in outcomes if not isinstance(outcome, BaseException)]
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    return Sample(wall=wall, cpu=cpu, latencies=latencies, errors=len(errors)), list(outcomes)


async def traced_peak(run: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """Peak traced memory above idle while *run* ran (and what it returned, still alive).

    Idle is what is allocated just before, with the clients built and warm, so the
    figure is what the calls themselves held at their worst moment.
    """
    gc.collect()
    tracemalloc.start()
    try:
        idle, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = await run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - idle, result
