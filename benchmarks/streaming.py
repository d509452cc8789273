"""One SSE stream shared by many callers: how late each caller sees it, and what it costs.

The server stamps every event with its ``time.time()`` just before sending it, and each
caller notes its own ``time.time()`` on its first and last bytes (same machine, same
clock). From that:

* first-byte lag: a caller's first byte minus the first event's stamp. The target
  compares a follower's (median over followers) with the leader's;
* last-byte lag: the last caller's last byte minus the last event's stamp, i.e. the
  time from the upstream's last byte to the last caller's last byte;
* peak traced memory above idle, as a multiple of the stream's size (separate pass).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .contenders import Contender
from .drive import Sample
from .stats import percentile

__all__ = ["SMALL_FANOUT", "SMALL_FANOUT_ROUNDS", "StreamPlan", "StreamShape", "drive_streams", "plan"]

JSON = dict[str, Any]

#: A few callers of the same stream, for the first-byte gap without a thousand readers
#: taking turns on the loop; rounds of it.
SMALL_FANOUT = 10
SMALL_FANOUT_ROUNDS = 5

#: Recent bytes a caller keeps to find the last event's stamp: a few events' worth,
#: trimmed as it goes so a caller never holds the stream.
_TAIL_BYTES = 8 * 1024


@dataclass(frozen=True)
class StreamShape:
    events: int
    event_bytes: int
    gap: float

    def query(self, latency: float) -> str:
        return f"events={self.events}&size={self.event_bytes}&gap={self.gap}&latency={latency}"


@dataclass
class _Seen:
    leader: bool | None
    first_at: float
    first_stamp: float
    last_at: float
    last_stamp: float
    size: int
    total: float


def _stamp(event: bytes) -> float:
    document = orjson.loads(event.strip().removeprefix(b"data:"))
    return float(document["t"])


def _first_event(data: bytes) -> bytes | None:
    end = data.find(b"\n\n")
    # Slicing only the event: a buffered contender hands over the whole stream as one
    # chunk, and copying it per caller would be the benchmark's cost, not theirs.
    return None if end < 0 else data[:end]


def _last_event(data: bytes) -> bytes:
    end = len(data)
    while end and data[end - 1] == 0x0A:  # trailing blank lines, without an rstrip copy
        end -= 1
    start = data.rfind(b"\n\n", 0, end)
    return data[start + 2 if start >= 0 else 0 : end]


async def _read(contender: Contender, url: str, payload: JSON) -> _Seen:
    start = time.perf_counter()
    first_at = 0.0
    head = b""  # bytes so far while the first event is not whole yet (rare)
    first_stamp: float | None = None
    tail: list[bytes] = []
    tail_size = size = 0
    async with contender.stream(url, payload) as received:
        async for chunk in received.chunks:
            if not size:
                first_at = time.time()
            size += len(chunk)
            if first_stamp is None:
                head = head + chunk if head else chunk
                event = _first_event(head)
                if event is not None:
                    first_stamp = _stamp(event)
                    head = b""
            tail.append(chunk)
            tail_size += len(chunk)
            while tail_size - len(tail[0]) >= _TAIL_BYTES:
                tail_size -= len(tail.pop(0))
        last_at = time.time()
    if first_stamp is None:
        raise RuntimeError("the stream ended before its first event")
    last = tail[-1] if len(tail[-1]) >= _TAIL_BYTES else b"".join(tail)
    return _Seen(
        leader=received.leader,
        first_at=first_at,
        first_stamp=first_stamp,
        last_at=last_at,
        last_stamp=_stamp(_last_event(last)),
        size=size,
        total=time.perf_counter() - start,
    )


async def drive_streams(contender: Contender, url: str, callers: int, payload: JSON) -> Sample:
    """*callers* concurrent callers of one stream; the sample with its lags in ``extra``."""
    cpu_start = time.process_time()
    start = time.perf_counter()
    outcomes = await asyncio.gather(
        *(_read(contender, url, dict(payload)) for _ in range(callers)), return_exceptions=True
    )
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    seen = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    sample = Sample(wall=wall, cpu=cpu, latencies=[s.total for s in seen], errors=len(outcomes) - len(seen))
    if not seen:
        return sample
    lags = [(s.leader, s.first_at - s.first_stamp) for s in seen]
    leaders = [lag for leader, lag in lags if leader]
    followers = [lag for leader, lag in lags if not leader]
    extra = {
        "stream_bytes": float(statistics.median(s.size for s in seen)),
        "last_byte_lag": max(s.last_at for s in seen) - max(s.last_stamp for s in seen),
    }
    if leaders:
        extra["leader_first_lag"] = statistics.median(leaders)
    if followers:
        extra["follower_first_lag_p50"] = statistics.median(followers)
        extra["follower_first_lag_p99"] = percentile(followers, 0.99)
    if leaders and followers:
        extra["follower_minus_leader_p50"] = extra["follower_first_lag_p50"] - extra["leader_first_lag"]
    sample.extra = extra
    return sample


@dataclass(frozen=True)
class StreamPlan:
    callers: int
    shape: StreamShape
    rounds: int
    #: Contenders that sit the whole workload out, and why.
    skip: dict[str, str]
    #: Contenders timed but left out of the (slow) tracemalloc pass, and why.
    memory_skip: dict[str, str]


def plan(quick: bool) -> StreamPlan:
    # 1 KB events about 1 ms apart: a stream that takes a second or two (live fan-out
    # shows against buffering), far faster than a model types (so the run stays short
    # and the fan-out's own throughput shows), and about 1 MB in all at full size, so
    # the memory ratio says whether the stream is held once or per caller.
    callers, events, rounds = (100, 100, 2) if quick else (1000, 1000, 3)
    skip = {
        "plain": f"{callers:,} separate streams: {callers:,} upstream calls by construction; not run for time"
    }
    memory_skip = (
        {}
        if quick
        else {
            "ours-httpx2": "tracemalloc pass skipped for time "
            "(about a minute; same fan-out code as ours-httpx)"
        }
    )
    return StreamPlan(callers, StreamShape(events, 1024, 0.001), rounds, skip, memory_skip)
