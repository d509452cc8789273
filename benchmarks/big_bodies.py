"""Big bodies side by side in one run: memory of a shared answer, and a stalled reader.

``python -m benchmarks.big_bodies [--quick]``

* **1 MB to N callers, each holding ``.content``**: peak memory above idle
  (tracemalloc), for ours (httpx and httpx2), plain httpx (N separate calls), and the
  earlier buffered design (the whole body read before headers are handed out, emulated
  by raising the small-body bound past the body).
* **Embeddings**: 100 callers of one 2.5 MB JSON answer: memory and wall time.
* **40 MiB, one caller alone**: what ours costs a caller that shares with nobody, in
  alternating rounds against plain httpx: time to the last byte, and this process's CPU
  time (user + system; the server is another process), which a busy machine disturbs
  far less than the wall time.
* **40 MiB, one reader stalled**: two callers share a 40 MiB download; one reads a
  chunk and then stops. The other's time to its last byte, against one caller alone
  through plain httpx, in the same run.

The upstream is ``benchmarks.server`` in a child process (loopback). Figures taken on a
shared machine vary; the ratios in one run are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import httpx2

import httpx_coalesce._upstream as upstream
from httpx_coalesce import CoalescingTransport

from .server import BenchServer

__all__ = ["main"]

MB = 1024 * 1024


@contextlib.contextmanager
def _buffered_design() -> Iterator[None]:
    """The design before headers came first: every body read whole, then handed out."""
    saved = upstream.SMALL_BODY_BYTES
    upstream.SMALL_BODY_BYTES = 1 << 40
    try:
        yield
    finally:
        upstream.SMALL_BODY_BYTES = saved


def _client(contender: str) -> Any:
    timeout = 120.0
    if contender == "plain httpx":
        return httpx.AsyncClient(timeout=timeout)
    module: Any = httpx2 if contender.endswith("httpx2") else httpx
    return module.AsyncClient(transport=CoalescingTransport(module.AsyncHTTPTransport()), timeout=timeout)


async def _shared_answer(url: str, contender: str, callers: int) -> tuple[int, float]:
    """Peak bytes above idle while *callers* each hold the body's ``.content``."""
    async with _client(contender) as client:
        await client.post(url, content=b"{}")  # warm: connection, imports, caches
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post(url, content=b"{}") for _ in range(callers)))
        wall = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert all(len(response.content) == len(responses[0].content) for response in responses)
        del responses
    return peak, wall


async def _measured(contender: str, run: Callable[[], Awaitable[tuple[int, float]]]) -> tuple[int, float]:
    if contender == "earlier buffered design":
        with _buffered_design():
            return await run()
    return await run()


async def _stalled(url: str, contender: str, stall: bool, other_reads: bool = False) -> float:
    """Seconds for one caller to read the whole body while another (if *stall*) holds
    its response after one chunk and reads no more, or (*other_reads*) reads on."""
    async with _client(contender) as client:
        holder: Any = None
        held = asyncio.Event()
        release = asyncio.Event()

        async def stalled_reader() -> None:
            nonlocal holder
            async with client.stream("POST", url, content=b"{}") as response:
                holder = response
                async for _ in response.aiter_raw():
                    held.set()
                    if not other_reads:
                        await release.wait()  # reads one chunk, then stops until the end
                        break

        task = asyncio.create_task(stalled_reader()) if stall or other_reads else None
        if task is not None:
            await held.wait()
        started = time.perf_counter()
        size = 0
        async with client.stream("POST", url, content=b"{}") as response:
            async for chunk in response.aiter_raw():
                size += len(chunk)
        elapsed = time.perf_counter() - started
        release.set()
        if task is not None:
            await task
        assert size >= 40 * MB, size
        return elapsed


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _alone_sync(url: str, contender: str) -> tuple[float, float]:
    """``_alone`` for a sync client (the event loop waits meanwhile: nothing else runs)."""
    inner = httpx.HTTPTransport()
    transport = inner if contender.startswith("plain") else CoalescingTransport(inner)
    with httpx.Client(transport=transport, timeout=120.0) as client:
        client.post(url.replace(f"size={40 * MB}", "size=1000"), content=b"{}")  # warm
        started, cpu = time.perf_counter(), _cpu()
        size = 0
        with client.stream("POST", url, content=b"{}") as response:
            for chunk in response.iter_raw():
                size += len(chunk)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        assert size >= 40 * MB, size
        return elapsed, cpu


async def _alone(url: str, contender: str) -> tuple[float, float]:
    """Seconds of wall and of this process's CPU for one caller to read the whole body."""
    if contender.endswith("(sync)"):
        return _alone_sync(url, contender)
    async with _client(contender) as client:
        await client.post(url.replace(f"size={40 * MB}", "size=1000"), content=b"{}")  # warm
        started, cpu = time.perf_counter(), _cpu()
        size = 0
        async with client.stream("POST", url, content=b"{}") as response:
            async for chunk in response.aiter_raw():
                size += len(chunk)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        assert size >= 40 * MB, size
        return elapsed, cpu


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _fmt_mb(value: int) -> str:
    return f"{value / MB:,.1f} MB"


class _Lines(list[str]):
    """The report, printed as it grows: a long run shows where it is."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


#: The parts of the run, each a section of the report (``--only`` picks one).
SECTIONS = ("memory", "alone", "stalled")


async def run(server: BenchServer, quick: bool, sections: tuple[str, ...] = SECTIONS) -> str:
    lines = _Lines()
    big = f"{server.url}/v1/blob?size={40 * MB}&latency=0"
    if "memory" in sections:
        await _memory(server, quick, lines)
    if "alone" in sections or "stalled" in sections:
        await _stalled(big, "plain httpx", stall=False)  # the server builds the body once
    if "alone" in sections:
        await _lone_caller(big, quick, lines)
    if "stalled" in sections:
        await _stalled_reader(big, quick, lines)
    return "\n".join(lines)


async def _memory(server: BenchServer, quick: bool, lines: _Lines) -> None:
    callers = 200 if quick else 1000
    blob = f"{server.url}/v1/blob?size={MB}&latency=0.05"
    lines.append(f"### 1 MB answer, {callers:,} callers each holding .content (peak above idle)\n")
    lines.append("| contender | peak memory | ÷ body | wall |")
    lines.append("|---|---|---|---|")
    for contender in ("ours-httpx", "ours-httpx2", "earlier buffered design", "plain httpx"):
        count = callers if contender != "plain httpx" else min(callers, 200)
        peak, wall = await _measured(
            contender,
            lambda c=contender, n=count: _shared_answer(blob, c, n),  # type: ignore[misc]
        )
        note = "" if count == callers else f" ({count} callers: separate downloads are slow)"
        lines.append(f"| {contender}{note} | {_fmt_mb(peak)} | {peak / MB:.1f}x | {wall * 1000:.0f} ms |")

    embeddings = f"{server.url}/v1/blob?size={5 * MB // 2}&latency=0.05"
    lines.append("\n### Embeddings: 100 callers, one 2.5 MB JSON answer\n")
    lines.append("| contender | peak memory | ÷ body | wall |")
    lines.append("|---|---|---|---|")
    for contender in ("ours-httpx", "ours-httpx2", "earlier buffered design", "plain httpx"):
        peak, wall = await _measured(
            contender,
            lambda c=contender: _shared_answer(embeddings, c, 100),  # type: ignore[misc]
        )
        ratio = peak / (2.5 * MB)
        lines.append(f"| {contender} | {_fmt_mb(peak)} | {ratio:.1f}x | {wall * 1000:.0f} ms |")


async def _lone_caller(big: str, quick: bool, lines: _Lines) -> None:
    lines.append("\n### 40 MiB to one caller alone (alternating rounds, medians)\n")
    lines.append("| contender | time to its last byte | ÷ plain | CPU of this process | ÷ plain |")
    lines.append("|---|---|---|---|---|")
    contenders = ("plain httpx", "ours-httpx", "ours-httpx2", "plain httpx (sync)", "ours-httpx (sync)")
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(3 if quick else 11):
        for name in contenders:
            wall, cpu = await _alone(big, name)
            walls[name].append(wall)
            cpus[name].append(cpu)
    for name in contenders:
        plain = "plain httpx (sync)" if name.endswith("(sync)") else "plain httpx"
        plain_wall, plain_cpu = _median(walls[plain]), _median(cpus[plain])
        wall, cpu = _median(walls[name]), _median(cpus[name])
        lines.append(
            f"| {name} | {wall * 1000:.0f} ms | {wall / plain_wall:.2f}x "
            f"| {cpu * 1000:.0f} ms | {cpu / plain_cpu:.2f}x |"
        )


async def _stalled_reader(big: str, quick: bool, lines: _Lines) -> None:
    lines.append("\n### 40 MiB shared by two callers, one of which stops reading\n")
    lines.append("| case | the reading caller's time to its last byte | vs alone (plain httpx) |")
    lines.append("|---|---|---|")
    rounds = 1 if quick else 5
    # Ours alone too: the target is "as fast as alone", and what ours costs a lone
    # 40 MiB reader (the section above) is not what the stalled reader costs the other.
    # Both callers reading isolates what sharing costs from what the spool costs.
    cases = [
        ("plain httpx, alone", "plain httpx", False, False),
        ("ours-httpx, alone", "ours-httpx", False, False),
        ("ours-httpx, the other caller reading too", "ours-httpx", False, True),
        ("ours-httpx, the other caller stalled", "ours-httpx", True, False),
        ("ours-httpx2, the other caller stalled", "ours-httpx2", True, False),
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(rounds):
        for name, contender, stall, other_reads in cases:
            times[name].append(await _stalled(big, contender, stall, other_reads))
    alone = sorted(times["plain httpx, alone"])[len(times["plain httpx, alone"]) // 2]
    for name, *_ in cases:
        median = sorted(times[name])[len(times[name]) // 2]
        lines.append(f"| {name} | {median * 1000:.0f} ms | {median / alone:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer callers and rounds")
    parser.add_argument("--only", choices=SECTIONS, help="run this section alone")
    args = parser.parse_args(argv)
    with BenchServer() as server:
        asyncio.run(run(server, args.quick, (args.only,) if args.only else SECTIONS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
