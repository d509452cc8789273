"""The floor: the least any transport that keeps the issue's promises must do per request.

A yardstick for the overhead targets, run side by side with the bare client and with
ours. It does what the issue requires of every request that may coalesce, and nothing
else:

* a key: every header and the JSON body canonicalised (orjson, sorted keys), hashed
  with blake2b;
* the upstream call run apart from the caller, in a task of its own, so that a caller
  cancelled does not cancel it for the others;
* each caller its own Response over the one shared body.

No limits, counters, credential rules, live streams, cancellation of unwanted calls,
errors shared as fresh exceptions, or window. Nobody should use it: its cost is the
one no real implementation can go under, so a target below it cannot be met by any
design, ours or another.

Run alone (``python -m benchmarks.floor``), it measures ours against it in process, in
alternating rounds of one run: unique keys one at a time, and 10,000 identical callers
at once (where each caller alone, to an upstream answering at once, is what a follower
is measured against). With ``--instructions N`` it also counts, under valgrind's
callgrind, the instructions each contender executes per request: on a shared machine
the wall clock moves by more than the differences measured here; instruction counts
do not.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

import orjson

__all__ = ["FloorTransport"]

_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
_T = TypeVar("_T")


class FloorTransport:
    """Coalesces identical requests with the bare minimum (see the module's text)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._flights: dict[str, asyncio.Future[_Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: Any) -> Any:
        headers = sorted(b"%s:%s" % (name.lower(), value) for name, value in request.headers.raw)
        head = b"%s %s\0%s\0" % (request.method.encode(), str(request.url).encode(), b"\n".join(headers))
        digest = hashlib.blake2b(head)
        digest.update(orjson.dumps(orjson.loads(request.content), option=orjson.OPT_SORT_KEYS))
        key = digest.hexdigest()
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = self._flights[key] = loop.create_future()
            task = loop.create_task(self._call(key, request, flight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        status, raw_headers, body = await flight
        library = sys.modules[type(request).__module__.partition(".")[0]]
        return library.Response(status, headers=raw_headers, stream=library.ByteStream(body), request=request)

    async def _call(self, key: str, request: Any, flight: asyncio.Future[_Answer]) -> None:
        try:
            response = await self._inner.handle_async_request(request)
            flight.set_result((response.status_code, response.headers.raw, await response.aread()))
        except Exception as error:
            flight.set_exception(error)
        finally:
            del self._flights[key]

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- ours against the floor, side by side ------------------------------------------------

_URL = "http://upstream.bench/v1/chat/completions"
_HEADERS = {"content-type": "application/json"}


async def _timed(job: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await job()
    return time.perf_counter() - start


async def unique_rounds(library: ModuleType, requests: int, rounds: int) -> dict[str, list[float]]:
    """Unique 1 KB JSON keys one at a time: the bare client, the floor and ours, in
    alternating rounds; wall seconds per round by contender."""
    from httpx_coalesce import CoalescingTransport

    from .inprocess import InProcessUpstream
    from .rounds import alternate
    from .workloads import chat_payload

    clients = {
        "bare": library.AsyncClient(transport=InProcessUpstream(library)),
        "floor": library.AsyncClient(transport=FloorTransport(InProcessUpstream(library))),
        "ours": library.AsyncClient(transport=CoalescingTransport(InProcessUpstream(library))),
    }
    counter = iter(range(1 << 30))

    def bodies(count: int) -> list[bytes]:
        tag = next(counter)
        return [orjson.dumps(chat_payload(f"floor-{tag}-{i}", 1024)) for i in range(count)]

    async def one(name: str) -> float:
        client, sent = clients[name], bodies(requests)

        async def job() -> None:
            for body in sent:
                await client.post(_URL, content=body, headers=_HEADERS)

        return await _timed(job)

    try:
        for name in clients:  # warm: first-call costs are not per-request costs
            await one(name)
        settle_pricing()
        return await alternate(list(clients), rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()


async def stampede_rounds(
    library: ModuleType, callers: int, rounds: int, delay: float = 0.005
) -> dict[str, list[float]]:
    """*callers* identical requests at once: ours and the floor (one upstream call,
    answering after *delay*) and the bare client to an upstream answering at once (each
    caller's own request: what a follower is measured against)."""
    from httpx_coalesce import CoalescingTransport

    from .inprocess import InProcessUpstream
    from .rounds import alternate
    from .workloads import chat_payload

    body = orjson.dumps(chat_payload("floor-stampede", 1024))
    upstreams = {
        "instant": InProcessUpstream(library),
        "floor": InProcessUpstream(library, delay=delay),
        "ours": InProcessUpstream(library, delay=delay),
    }
    clients = {
        "instant": library.AsyncClient(transport=upstreams["instant"]),
        "floor": library.AsyncClient(transport=FloorTransport(upstreams["floor"])),
        "ours": library.AsyncClient(transport=CoalescingTransport(upstreams["ours"])),
    }

    async def one(name: str, count: int = callers) -> float:
        client, hits = clients[name], upstreams[name].hits

        async def job() -> None:
            await asyncio.gather(*(client.post(_URL, content=body, headers=_HEADERS) for _ in range(count)))

        seconds = await _timed(job)
        if name != "instant" and upstreams[name].hits - hits != 1:
            raise RuntimeError(f"{name}: {upstreams[name].hits - hits} upstream calls, not 1")
        return seconds

    try:
        for name in clients:
            await one(name, 100)
        settle_pricing()
        return await alternate(list(clients), rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()


def settle_pricing() -> None:
    """Wait for the pricer's worker to price what the warm-up shared.

    Its first job imports the price list (genai-prices, about 0.4 s of one CPU, once per
    process) in a thread of its own; left running, that one-off cost lands in whatever
    the measured rounds are doing, and reads as a per-request cost of ours.
    """
    from httpx_coalesce._cost import wait_priced

    wait_priced(60.0)


# -- instructions per request, under callgrind ------------------------------------------

#: What each workload's contenders are: for callers at once, the bare client's caller
#: alone to an upstream answering at once ("instant") is what a follower is measured against.
_CONTENDERS = {"unique": ("bare", "floor", "ours"), "stampede": ("instant", "floor", "ours")}


async def _count_once(library: ModuleType, contender: str, workload: str, count: int, send: bool) -> None:
    """The work one process does under callgrind: warm up, let pricing settle, then
    *count* requests (unique keys one at a time, or identical callers at once). With
    *send* false, the same process sends none of them: the run that is subtracted, so
    the difference is the requests' own cost, not the interpreter's start or the warm-up."""
    from httpx_coalesce import CoalescingTransport

    from .inprocess import InProcessUpstream
    from .workloads import chat_payload

    upstream = InProcessUpstream(library, delay=0.005 if contender in ("floor", "ours") else 0.0)
    transport: Any = upstream
    if contender == "floor":
        transport = FloorTransport(upstream)
    elif contender == "ours":
        transport = CoalescingTransport(upstream)
    # Under valgrind everything runs about fifty times slower: no deadline of the
    # client's or ours may fall due and turn a follower into a caller of its own.
    client = library.AsyncClient(transport=transport, timeout=library.Timeout(3600.0))
    if workload == "unique":
        warm = [orjson.dumps(chat_payload(f"warm-{i}", 1024)) for i in range(100)]
        bodies = [orjson.dumps(chat_payload(f"count-{i}", 1024)) for i in range(count)]
        for body in warm:
            await client.post(_URL, content=body, headers=_HEADERS)
        settle_pricing()
        if send:
            for body in bodies:
                await client.post(_URL, content=body, headers=_HEADERS)
    else:
        body = orjson.dumps(chat_payload("floor-stampede", 1024))
        await asyncio.gather(*(client.post(_URL, content=body, headers=_HEADERS) for _ in range(100)))
        settle_pricing()
        hits = upstream.hits
        if send:
            await asyncio.gather(*(client.post(_URL, content=body, headers=_HEADERS) for _ in range(count)))
            if contender != "instant" and upstream.hits - hits != 1:
                raise RuntimeError(f"{contender}: {upstream.hits - hits} upstream calls, not 1")
    await client.aclose()


def _run(job: Awaitable[_T], eager: bool) -> _T:
    """Run *job* on a new event loop; *eager*: every task starts at once, in its
    creator's turn, until its first suspension (Python 3.12's eager task factory)."""

    async def main() -> _T:
        if eager:
            asyncio.get_running_loop().set_task_factory(_eager_task_factory())
        return await job

    return asyncio.run(main())


def _eager_task_factory() -> Any:
    factory = getattr(asyncio, "eager_task_factory", None)
    if factory is None:
        raise SystemExit(f"eager task start needs Python 3.12 or later, not {sys.version.split()[0]}")
    return factory


def _instructions(library: str, contender: str, workload: str, count: int, send: bool, eager: bool) -> int:
    """Instructions (callgrind's total) of one process running :func:`_count_once`."""
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "benchmarks.floor", "--library", library,
            "--count-once", contender, workload, str(count), "send" if send else "idle",
            *(["--eager"] if eager else []),
        ]  # fmt: skip
        # A fixed hash seed: randomised hashing moves whole-run counts by more than
        # the differences measured here.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, capture_output=True, env=env)
        with open(out) as counts:
            found = re.search(r"^(?:summary|totals): (\d+)", counts.read(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no instruction total in callgrind's output for {contender} {workload}")
        return int(found.group(1))


def instructions_per_request(library: str, count: int, eager: bool = False) -> dict[str, dict[str, float]]:
    """Instructions per request of each contender, by workload: a run of *count*
    requests less the same run sending none, divided by *count*."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        (workload, contender, send)
        for workload, contenders in _CONTENDERS.items()
        for contender in contenders
        for send in (True, False)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        totals = dict(
            zip(
                jobs,
                pool.map(lambda job: _instructions(library, job[1], job[0], count, job[2], eager), jobs),
                strict=True,
            )
        )
    return {
        workload: {
            contender: (totals[workload, contender, True] - totals[workload, contender, False]) / count
            for contender in contenders
        }
        for workload, contenders in _CONTENDERS.items()
    }


def _print_instructions(library: str, count: int, found: dict[str, dict[str, float]]) -> None:
    print(f"{library}, instructions per request (callgrind, {count:,} requests less none):")
    unique, stampede = found["unique"], found["stampede"]
    print(f"  unique keys: bare {unique['bare'] / 1e3:,.0f}k, floor {unique['floor'] / 1e3:,.0f}k, "
          f"ours {unique['ours'] / 1e3:,.0f}k")  # fmt: skip
    print(f"    ours / floor {unique['ours'] / unique['floor']:.3f}x, "
          f"floor / bare {unique['floor'] / unique['bare']:.3f}x, "
          f"ours / bare {unique['ours'] / unique['bare']:.3f}x")  # fmt: skip
    print(f"  {count:,} identical callers, per caller: alone {stampede['instant'] / 1e3:,.0f}k, "
          f"floor {stampede['floor'] / 1e3:,.0f}k, ours {stampede['ours'] / 1e3:,.0f}k")  # fmt: skip
    print(f"    ours / floor {stampede['ours'] / stampede['floor']:.3f}x, "
          f"floor / alone {stampede['floor'] / stampede['instant']:.3f}x, "
          f"ours / alone (a follower's cost) {stampede['ours'] / stampede['instant']:.3f}x")  # fmt: skip


def _ratio(runs: dict[str, list[float]], top: str, bottom: str) -> str:
    from .stats import ratios

    found = ratios(runs[top], runs[bottom])
    return f"{found.median:.3f}x ({found.low:.3f}-{found.high:.3f})"


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.floor``: ours against the floor, in process, same run."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--library", default="httpx", choices=["httpx", "httpx2"])
    parser.add_argument("--requests", type=int, default=1000, help="unique keys per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--callers", type=int, default=10_000)
    parser.add_argument("--stampede-rounds", type=int, default=5)
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="instead, count instructions per request over N requests under callgrind (needs valgrind)",
    )
    parser.add_argument(
        "--eager", action="store_true", help="start every task eagerly (Python 3.12+), for every contender"
    )
    # One contender's process under callgrind (see _instructions).
    parser.add_argument("--count-once", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    library = importlib.import_module(args.library)
    if args.eager:
        _eager_task_factory()  # refused here, before any round, on Python 3.11
    if args.count_once:
        contender, workload, count, send = args.count_once
        _run(_count_once(library, contender, workload, int(count), send == "send"), args.eager)
        return 0
    if args.instructions:
        found = instructions_per_request(args.library, args.instructions, args.eager)
        _print_instructions(args.library, args.instructions, found)
        return 0
    unique = _run(unique_rounds(library, args.requests, args.rounds), args.eager)
    print(
        f"{library.__name__}, unique keys one at a time ({args.requests:,} per round, {args.rounds} rounds):"
    )
    print(f"  ours / floor   {_ratio(unique, 'ours', 'floor')}")
    print(f"  floor / bare   {_ratio(unique, 'floor', 'bare')}")
    print(f"  ours / bare    {_ratio(unique, 'ours', 'bare')}")
    stampede = _run(stampede_rounds(library, args.callers, args.stampede_rounds), args.eager)
    print(f"{library.__name__}, {args.callers:,} identical callers at once ({args.stampede_rounds} rounds):")
    print(f"  ours / floor   {_ratio(stampede, 'ours', 'floor')}")
    print(f"  floor / each caller alone (instant upstream)   {_ratio(stampede, 'floor', 'instant')}")
    print(f"  ours / each caller alone: a follower's cost     {_ratio(stampede, 'ours', 'instant')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
