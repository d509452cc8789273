"""The real SDKs, 50 identical concurrent calls: with CoalescingTransport, and without it.

For each SDK (openai, anthropic; async clients on asyncio) and each call shape (one answer, one stream), a
round fires ``--callers`` identical calls at once, through a client whose httpx2 client has a
CoalescingTransport, and through a plain httpx2 client (the SDK's usual setup), both with httpx2's default
connection limits. Rounds alternate which of the two goes first, and each contender's clients are warmed up
before the first round, so neither pays for connecting. Per contender: upstream calls per round (counted
by the server; the target with the transport is 1), wall time of the round (first call started to last
answer read) and the client process's CPU time. The table gives medians and the ratio of the medians
(coalesced / plain).

The upstream is the project's fake LLM API (``httpx_coalesce._demo.fake_api``) with ``--latency`` seconds
before every answer, in a child process of its own, so that its CPU does not share the client's GIL.

Run from the repository root::

    python -m benchmarks.bench_sdk
    python -m benchmarks.bench_sdk --quick    # fewer rounds

Writes ``benchmarks/results/sdk.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
from starlette.types import Receive, Scope, Send

from benchmarks.server import start_child
from httpx_coalesce import CoalescingTransport

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "sdk.json"

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
PROMPT = "Summarise the incident report for the status page in three sentences."


# ------------------------------------------------------------------------------ the upstream process


def serve(latency: float) -> None:
    """In the child: run the fake API, print its port, serve until the parent closes our stdin."""
    from httpx_coalesce._demo.fake_api import make_fake_api
    from httpx_coalesce._demo.server import LocalServer

    api = make_fake_api(latency=latency)
    inner = api.app

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/hits":
            body = orjson.dumps({"hits": api.hits})
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await inner(scope, receive, send)

    with LocalServer(app, on_stop=api.close) as server:
        print(server.port, flush=True)
        sys.stdin.read()


class UpstreamProcess:
    """The fake API in a child process (``python -m benchmarks.bench_sdk --serve``)."""

    def __init__(self, latency: float, startup_timeout: float = 30.0) -> None:
        self._latency = latency
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hits(self) -> int:
        with httpx2.Client() as client:
            return int(client.get(f"{self.url}/_bench/hits").json()["hits"])

    def __enter__(self) -> UpstreamProcess:
        self._process, self.port = start_child(
            ["benchmarks.bench_sdk", "--serve", "--latency", str(self._latency)],
            self._startup_timeout,
            stdin=True,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.stdin is not None:
            process.stdin.close()  # the child's signal to stop
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# ------------------------------------------------------------------------------------ the workloads


@dataclass(frozen=True)
class Workload:
    sdk: str
    call: str
    stream: bool


WORKLOADS = [
    Workload("openai", "chat.completions.create", stream=False),
    Workload("openai", "chat.completions.create(stream=True)", stream=True),
    Workload("anthropic", "messages.create", stream=False),
    Workload("anthropic", "messages.stream", stream=True),
]

Call = Callable[[], Awaitable[str]]


class Contender:
    """One SDK client (and its http client) making the workload's call, with or without the transport."""

    def __init__(self, workload: Workload, url: str, coalesce: bool) -> None:
        self.name = "coalesced" if coalesce else "plain"
        self.transport = CoalescingTransport() if coalesce else None
        http_client = httpx2.AsyncClient(transport=self.transport, timeout=60.0)
        self.client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
        if workload.sdk == "openai":
            self.client = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="sk-bench", max_retries=0, http_client=http_client
            )
            self.call = _openai_call(self.client, workload.stream)
        else:
            self.client = anthropic.AsyncAnthropic(
                base_url=url, api_key="sk-ant-bench", max_retries=0, http_client=http_client
            )
            self.call = _anthropic_call(self.client, workload.stream)

    async def aclose(self) -> None:
        await self.client.close()


def _openai_call(client: openai.AsyncOpenAI, stream: bool) -> Call:
    messages: list[Any] = [{"role": "user", "content": PROMPT}]

    async def complete() -> str:
        completion = await client.chat.completions.create(model=GPT, messages=messages)
        return completion.choices[0].message.content or ""

    async def streamed() -> str:
        chunks = await client.chat.completions.create(model=GPT, messages=messages, stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

    return streamed if stream else complete


def _anthropic_call(client: anthropic.AsyncAnthropic, stream: bool) -> Call:
    messages: list[Any] = [{"role": "user", "content": PROMPT}]

    async def complete() -> str:
        message = await client.messages.create(model=CLAUDE, max_tokens=64, messages=messages)
        return "".join(block.text for block in message.content if block.type == "text")

    async def streamed() -> str:
        async with client.messages.stream(model=CLAUDE, max_tokens=64, messages=messages) as events:
            return await events.get_final_text()

    return streamed if stream else complete


@dataclass
class Samples:
    upstream_calls: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "upstream_calls": self.upstream_calls,
            "wall_s": [round(value, 5) for value in self.wall_s],
            "cpu_s": [round(value, 5) for value in self.cpu_s],
            "upstream_calls_median": statistics.median(self.upstream_calls),
            "wall_median_s": round(statistics.median(self.wall_s), 5),
            "cpu_median_s": round(statistics.median(self.cpu_s), 5),
        }


async def _round(contender: Contender, callers: int, upstream: UpstreamProcess, samples: Samples) -> None:
    before = await asyncio.to_thread(upstream.hits)
    cpu, started = time.process_time(), time.perf_counter()
    answers = await asyncio.gather(*(contender.call() for _ in range(callers)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = await asyncio.to_thread(upstream.hits)
    if len(set(answers)) != 1 or not answers[0]:
        raise AssertionError(f"{contender.name}: callers got different or empty answers")
    samples.upstream_calls.append(after - before)
    samples.wall_s.append(wall)
    samples.cpu_s.append(cpu)


async def run_workload(
    workload: Workload, upstream: UpstreamProcess, callers: int, rounds: int
) -> dict[str, Any]:
    contenders = [
        Contender(workload, upstream.url, coalesce=False),
        Contender(workload, upstream.url, coalesce=True),
    ]
    samples = {contender.name: Samples() for contender in contenders}
    try:
        for contender in contenders:  # warm-up: connections open, code paths imported
            await _round(contender, callers, upstream, Samples())
        for number in range(rounds):
            order = contenders if number % 2 == 0 else contenders[::-1]
            for contender in order:
                await _round(contender, callers, upstream, samples[contender.name])
    finally:
        for contender in contenders:
            await contender.aclose()
    coalesced, plain = samples["coalesced"], samples["plain"]
    paired = [ours / theirs for ours, theirs in zip(coalesced.wall_s, plain.wall_s, strict=True)]
    return {
        "sdk": workload.sdk,
        "call": workload.call,
        "stream": workload.stream,
        "coalesced": coalesced.summary(),
        "plain": plain.summary(),
        "wall_ratio": round(statistics.median(coalesced.wall_s) / statistics.median(plain.wall_s), 4),
        "wall_ratio_paired_median": round(statistics.median(paired), 4),
        "cpu_ratio": round(statistics.median(coalesced.cpu_s) / statistics.median(plain.cpu_s), 4),
    }


# ---------------------------------------------------------------------------------------- reporting


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {
            name: _version(name) for name in ("httpx-coalesce", "httpx2", "openai", "anthropic", "uvicorn")
        },
    }


def table(results: Sequence[dict[str, Any]], callers: int) -> str:
    lines = [
        "| SDK | call | callers | upstream calls, coalesced | upstream calls, plain "
        "| wall, coalesced (median) | wall, plain (median) | wall ratio | CPU ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        ours, theirs = result["coalesced"], result["plain"]
        lines.append(
            f"| {result['sdk']} | `{result['call']}` | {callers} "
            f"| {ours['upstream_calls_median']:g} | {theirs['upstream_calls_median']:g} "
            f"| {ours['wall_median_s'] * 1000:.0f} ms | {theirs['wall_median_s'] * 1000:.0f} ms "
            f"| {result['wall_ratio']:.2f} | {result['cpu_ratio']:.2f} |"
        )
    return "\n".join(lines)


def write_results(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--callers", type=int, default=50, help="identical concurrent calls per round")
    parser.add_argument("--rounds", type=int, default=9, help="measured rounds per contender")
    parser.add_argument("--latency", type=float, default=0.2, help="fake API latency per answer, seconds")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serve(options.latency)
        return 0
    rounds = 3 if options.quick else options.rounds

    results: list[dict[str, Any]] = []
    with UpstreamProcess(options.latency) as upstream:
        for workload in WORKLOADS:
            results.append(asyncio.run(run_workload(workload, upstream, options.callers, rounds)))
    document = {
        "benchmark": "sdk",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameters": {
            "callers": options.callers,
            "rounds": rounds,
            "latency_s": options.latency,
            "client": "async SDK clients on asyncio, httpx2.AsyncClient, max_retries=0",
            "upstream": "httpx_coalesce._demo.fake_api in a child process (uvicorn), answers after latency_s",
            "plain": "the same SDK client with a plain httpx2.AsyncClient (no transport)",
        },
        "environment": environment(),
        "workloads": results,
    }
    write_results(document, options.output)
    print(table(results, options.callers))
    print(f"\n{rounds} alternating rounds per contender after a warm-up; results in {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
