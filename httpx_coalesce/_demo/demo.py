"""The demo: a burst of identical LLM calls, with and without coalescing.

It starts the fake LLM API on loopback with a set latency, fires N identical chat
completion requests at once through a plain httpx client and through one with
CoalescingTransport, buffered and streamed, and prints what reached the API.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import httpx

from .._transport import CoalescingTransport
from .fake_api import FakeLLMAPI
from .server import LocalServer

__all__ = ["main"]

PROMPT = {
    "model": "gpt-demo",
    "messages": [{"role": "user", "content": "What does 'amortization' mean? One sentence."}],
}


@dataclass(frozen=True)
class Row:
    mode: str
    transport: str
    requests: int
    upstream_calls: int
    seconds: float
    identical: bool
    tokens_saved: int | str


async def burst(api: FakeLLMAPI, url: str, requests: int, stream: bool, coalesce: bool) -> Row:
    api.reset()
    transport: httpx.AsyncBaseTransport = CoalescingTransport() if coalesce else httpx.AsyncHTTPTransport()
    # One connection per caller for the plain client too, so it is not throttled by a pool.
    limits = httpx.Limits(max_connections=requests)
    body = {**PROMPT, "stream": True, "stream_options": {"include_usage": True}} if stream else PROMPT
    answers: list[bytes] = []
    async with httpx.AsyncClient(base_url=url, transport=transport, limits=limits, timeout=60) as client:

        async def call() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                answers.append(await response.aread())

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(requests):
                group.start_soon(call)
        seconds = time.perf_counter() - started
    saved: int | str = transport.stats().tokens_saved if isinstance(transport, CoalescingTransport) else "-"
    return Row(
        mode="streamed (SSE)" if stream else "buffered JSON",
        transport="CoalescingTransport" if coalesce else "plain httpx",
        requests=requests,
        upstream_calls=api.hits,
        seconds=seconds,
        identical=len(set(answers)) == 1,
        tokens_saved=saved,
    )


def table(rows: Sequence[Row]) -> str:
    header = (
        "mode",
        "transport",
        "requests",
        "upstream calls",
        "wall time",
        "one shared answer",
        "tokens saved",
    )
    cells = [
        (
            r.mode,
            r.transport,
            str(r.requests),
            str(r.upstream_calls),
            f"{r.seconds:.2f} s",
            str(r.identical),
            str(r.tokens_saved),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return (
            "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(c) for c in cells)])


async def run(requests: int, latency: float) -> list[Row]:
    api = FakeLLMAPI(latency=latency, stream_gap=latency / 10)
    with LocalServer(api.app, on_stop=api.close) as server:
        rows = []
        for stream in (False, True):
            for coalesce in (False, True):
                rows.append(await burst(api, server.url, requests, stream, coalesce))
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m httpx_coalesce demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=50, help="identical requests in the burst (50)")
    parser.add_argument(
        "--latency", type=float, default=0.5, help="the fake API's answer latency, seconds (0.5)"
    )
    options = parser.parse_args(argv)
    print(
        f"A burst of {options.requests} identical chat completions against a local fake LLM API "
        f"({options.latency:.2f} s latency):\n"
    )
    rows = anyio.run(run, options.requests, options.latency)
    print(table(rows))
    plain, ours = rows[0], rows[1]
    print(f"\nWith coalescing the API saw {ours.upstream_calls} call(s) instead of {plain.upstream_calls}.")
    return 0
