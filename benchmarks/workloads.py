"""The workloads: who calls, with what, against which endpoint of the loopback server.

A workload is a list of call payloads (one per concurrent caller), built before any
clock starts, plus the endpoint and what to measure. Payloads are OpenAI-shaped chat
requests; callers that should share a flight get equal payloads, the others differ in
their message text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Workload", "chat_payload", "plan"]

JSON = dict[str, Any]

#: The loopback server's answer latency on every loopback workload (an LLM answers in
#: seconds; 50 ms keeps the runs short while every duplicate still overlaps).
LATENCY = 0.05


#: Unique calls go 20 at a time, what httpx keeps alive: more would measure how the
#: pool churns connections and scans its queue (costly, and for every contender alike),
#: not what coalescing adds.
UNIQUE_CONCURRENCY = 20


def chat_payload(tag: str, size: int = 300) -> JSON:
    """A chat request of about *size* bytes of JSON whose identity is *tag*."""
    text = f"Question {tag}: what does amortization mean?"
    pad = max(size - len(text) - 120, 0)
    if pad:
        # Filler words, not one long run of one character, so the JSON has the shape of prose.
        words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (pad // 56 + 1))[:pad]
        text = f"{text} {words}"
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ],
        "temperature": 0,
    }


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    path: str
    payloads: list[JSON] = field(repr=False)
    #: ``post``: whole answers; ``stream``: the answer read as it arrives.
    kind: Literal["post", "stream"] = "post"
    #: Upstream calls a perfect coalescer makes.
    ideal_upstream: int = 1
    #: Also run a pass under tracemalloc for the peak memory above idle.
    memory: bool = False
    #: Callers in flight at once (None: all of them).
    concurrency: int | None = None
    #: Rounds, when this workload needs fewer than the plan's (see :func:`plan`).
    rounds: int | None = None
    #: Contenders (by name) that sit this one out, and why.
    skip: dict[str, str] = field(default_factory=dict)
    #: Contenders left out of the timed rounds but run in the memory pass, and why.
    memory_only: dict[str, str] = field(default_factory=dict)

    @property
    def callers(self) -> int:
        return len(self.payloads)


def _identical(n: int) -> list[JSON]:
    one = chat_payload("same")
    # Each caller builds its own (equal) request, as separate requests in a server would.
    return [dict(one) for _ in range(n)]


def _unique(n: int, size: int, prefix: str) -> list[JSON]:
    return [chat_payload(f"{prefix}-{i}", size) for i in range(n)]


def _mixed(n: int, hot_keys: int = 10) -> list[JSON]:
    """90 % of calls repeat one of *hot_keys* requests, 10 % are unique; shuffled, so
    duplicates and unique calls interleave."""
    unique = n // 10
    hot = [chat_payload(f"hot-{i % hot_keys}") for i in range(n - unique)]
    calls = hot + _unique(unique, 300, "cold")
    random.Random(1).shuffle(calls)
    return calls


def plan(quick: bool, latency: float = LATENCY) -> list[Workload]:
    """Every loopback workload, sized for a full run or a smoke run."""
    query = f"?latency={latency}"
    chat = "/v1/chat/completions" + query
    sizes = [1, 10, 100] if quick else [1, 10, 100, 1000, 10_000]
    workloads = [
        Workload(
            name=f"identical-{n}",
            title=f"{n:,} concurrent identical calls",
            path=chat,
            payloads=_identical(n),
            rounds=3 if n >= 1000 else None,
            skip={"plain": "10,000 uncoalesced calls queue behind 100 connections; not run for time"}
            if n >= 10_000
            else {},
        )
        for n in sizes
    ]
    mixed = 100 if quick else 500
    unique = 40 if quick else 200
    big = 20 if quick else 100
    blob_callers = 50 if quick else 1000
    workloads += [
        Workload(
            name="mixed",
            title=f"{mixed:,} calls: 90% duplicates of 10 hot requests, 10% unique",
            path=chat,
            payloads=_mixed(mixed),
            ideal_upstream=10 + mixed // 10,
        ),
        Workload(
            name="unique-1kb",
            title=f"{unique:,} unique calls, 1 KB bodies, {UNIQUE_CONCURRENCY} at a time (pure overhead)",
            path=chat,
            payloads=_unique(unique, 1024, "u1k"),
            ideal_upstream=unique,
            concurrency=UNIQUE_CONCURRENCY,
        ),
        Workload(
            name="unique-100kb",
            title=f"{big:,} unique calls, 100 KB bodies, {UNIQUE_CONCURRENCY} at a time (key cost)",
            path=chat,
            payloads=_unique(big, 100 * 1024, "u100k"),
            ideal_upstream=big,
            concurrency=UNIQUE_CONCURRENCY,
            rounds=3,
        ),
        Workload(
            name="blob-1mb",
            title=f"a 1 MB answer shared by {blob_callers:,} callers",
            path=f"/v1/blob?size={1024 * 1024}&latency={latency}",
            payloads=_identical(blob_callers),
            memory=True,
            memory_only={
                "plain": f"{blob_callers:,} separate 1 MB downloads take ~15 s a round; "
                "run once, in the memory pass (its upstream calls and memory are the point)"
            },
            rounds=3,
        ),
    ]
    return workloads
