"""No leaks: a long run of mixed traffic leaves an empty table and flat memory.

The inner transport answers in-process at once (buffered bodies, streamed bodies,
errors), so the run is fast and measures the transport alone. Memory is traced with
tracemalloc: the size allocated after a warm-up window is compared with the size at
the end (the warm-up itself runs untraced, for speed); what one flight holds must not
pile up, however many flights went by. No flight, seat, replay or per-caller stream may
be left alive at all.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import httpx
import pytest

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._flight import Flight, Seat
from httpx_coalesce._replay import Replay

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]

#: Requests traced at least (tracing costs ~10x): the rest is warm-up.
TRACED = 600
#: Growth allowed between the end of the warm-up and the end of the run: ~160 bytes a
#: traced request, less than anything a flight, a seat or a response is made of.
TOLERANCE_BYTES = 96 * 1024
BATCH = 50
PATHS = 40


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await anyio.lowlevel.checkpoint()
            yield chunk


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers at once: ``/buffered/N`` whole, ``/stream/N`` in chunks (no length),
    ``/error/N`` with a connect error."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        kind, _, number = request.url.path.strip("/").partition("/")
        body = f"{kind} {number} ".encode() * 20
        if kind == "error":
            raise httpx.ConnectError("refused", request=request)
        if kind == "stream":
            return httpx.Response(200, stream=_Chunks([body] * 4), headers={"content-type": "text/plain"})
        return httpx.Response(200, content=body)


async def one_call(client: httpx.AsyncClient, path: str, action: str, tally: Counter[str]) -> None:
    kind, _, number = path.strip("/").partition("/")
    expected = f"{kind} {number} ".encode() * 20 * (4 if kind == "stream" else 1)
    with anyio.CancelScope() as scope:
        if action == "cancel_before_head":
            scope.cancel()
        try:
            async with client.stream("GET", path) as response:
                if action == "close_unread":
                    tally["closed_unread"] += 1
                    return
                got = b""
                # aiter_bytes, not aiter_raw: a buffered answer is made with content=, so
                # it arrives read, and the leader gets that very Response, as alone, whose
                # raw stream is spent (aiter_raw would raise StreamConsumed, alone too).
                async for chunk in response.aiter_bytes():
                    got += chunk
                    if action == "cancel_mid_body":
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
                if got != expected:
                    tally["wrong_responses"] += 1
                tally["answered"] += 1
        except httpx.ConnectError:
            tally["errors"] += 1 if kind == "error" else 0
            tally["wrong_responses"] += 0 if kind == "error" else 1
    if scope.cancelled_caught:
        tally["cancellations_injected"] += 1


async def traffic(client: httpx.AsyncClient, rng: random.Random, requests: int, tally: Counter[str]) -> None:
    actions = ["read", "read", "read", "cancel_mid_body", "cancel_before_head", "close_unread"]
    for _ in range(requests // BATCH):
        async with anyio.create_task_group() as group:
            for _ in range(BATCH):
                kind = rng.choice(["buffered", "buffered", "stream", "error"])
                path = f"/{kind}/{rng.randrange(PATHS)}"
                group.start_soon(one_call, client, path, rng.choice(actions), tally)
        tally["callers"] += BATCH


def live_flight_objects() -> Counter[str]:
    """Flights, seats, replays and per-caller streams still alive anywhere."""
    gc.collect()
    kinds = {Flight, Seat, Replay}
    return Counter(
        type(thing).__name__
        for thing in gc.get_objects()
        if type(thing) in kinds or type(thing).__name__ in ("_AsyncSeatStream", "_SyncSeatStream")
    )


async def settle() -> None:
    """Let the event loop finish what it owes: abandoned async generators (a stream left
    by a cancelled reader) are closed by a task the loop runs a little later."""
    for _ in range(5):
        gc.collect()
        await anyio.lowlevel.checkpoint()


def traced_size() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param(2_000, id="ci"),
        pytest.param(300_000, id="long", marks=[pytest.mark.long, pytest.mark.timeout(3600)]),
    ],
)
async def test_mixed_traffic_leaves_an_empty_table_and_flat_memory(
    requests: int, make_transport: MakeTransport, figures: Counter[str], seed: int
) -> None:
    rng = random.Random(seed)
    inner = InstantTransport()
    transport = make_transport(transport=inner)
    tally: Counter[str] = Counter()
    was_tracing = tracemalloc.is_tracing()
    async with httpx.AsyncClient(base_url="http://instant", transport=transport) as client:
        # Warm-up untraced (caches, pools, lazily made classes fill up here); tracing
        # from then on, so what is still allocated at the end is what the run kept.
        warm_up = requests - max(requests // 5, TRACED)
        await traffic(client, rng, warm_up, tally)
        tracemalloc.start()
        try:
            await settle()
            after_warm_up = traced_size()
            await traffic(client, rng, requests - warm_up, tally)
            await settle()
            at_end = traced_size()
        finally:
            if not was_tracing:
                tracemalloc.stop()
    # A stream collected only now hands its seat back on the loop (never from inside
    # the collector): let that run before looking.
    await settle()
    stats = transport.stats()
    alive = live_flight_objects()
    figures.update(tally)
    figures["upstream_calls"] += inner.calls
    figures["leaked_flights"] += stats.in_flight
    figures["leaked_waiters"] += stats.waiters
    figures["memory_growth_bytes"] += max(at_end - after_warm_up, 0)
    assert (stats.in_flight, stats.waiters) == (0, 0)
    assert not alive, alive
    assert tally["wrong_responses"] == 0
    assert tally["callers"] == requests
    assert at_end - after_warm_up < TOLERANCE_BYTES, (after_warm_up, at_end)
