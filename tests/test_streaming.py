"""Live fan-out of streamed responses, against a real SSE server on loopback."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import orjson
import pytest

from httpx_coalesce import CoalescingTransport, Limits

from .conftest import collect_garbage_holding, drop_into_a_cycle, until
from .upstream import Upstream

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]


def expected_stream(events: int, pad: int = 0) -> bytes:
    return (
        b"".join(b"data: " + orjson.dumps({"n": number}) + b"x" * pad + b"\n\n" for number in range(events))
        + b"data: [DONE]\n\n"
    )


class Reader:
    """One streaming caller: records what it got, and when it saw the first event."""

    def __init__(self) -> None:
        self.data = b""
        self.first = anyio.Event()
        self.error: BaseException | None = None
        self.response: Any = None

    async def read(self, client: Any, url: str, stop_after_first: bool = False) -> None:
        try:
            async with client.stream("GET", url) as response:
                self.response = response
                async for chunk in response.aiter_raw():
                    self.data += chunk
                    self.first.set()
                    if stop_after_first:
                        return
        except Exception as error:
            self.error = error


async def test_fifty_streaming_callers_share_one_live_upstream_stream(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    readers = [Reader() for _ in range(50)]
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for reader in readers:
                group.start_soon(reader.read, client, "/sse?events=10&hold=1")
            # The server has sent one event and holds the other nine: every caller must
            # already have the first one. Liveness, shown without timing.
            for reader in readers:
                with anyio.fail_after(10):
                    await reader.first.wait()
            assert not upstream.gate.is_set()
            upstream.gate.set()
    assert upstream.hits["/sse"] == 1
    assert {reader.data for reader in readers} == {expected_stream(10)}
    await until(lambda: upstream.streams_closed >= 1)  # counted in the server's finally
    assert upstream.streams_closed == 1


async def test_a_caller_joining_mid_stream_gets_the_whole_stream(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    early, late = Reader(), Reader()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(early.read, client, "/sse?events=10&hold=5")
            await until(upstream.holding.is_set)
            await until(lambda: early.data.count(b"\n\n") == 5)
            group.start_soon(late.read, client, "/sse?events=10&hold=5")
            await until(lambda: late.first.is_set() or late.error is not None)
            assert late.error is None
            upstream.gate.set()
    assert upstream.hits["/sse"] == 1
    assert early.data == expected_stream(10), early.data
    assert late.data == expected_stream(10), late.data
    assert late.response.extensions["coalesce"].leader is False


async def test_a_caller_that_stops_early_only_detaches_itself(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    quitter, stayers = Reader(), [Reader() for _ in range(3)]
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(quitter.read, client, "/sse?events=10&hold=1", True)
            for reader in stayers:
                group.start_soon(reader.read, client, "/sse?events=10&hold=1")
            await until(lambda: all(r.first.is_set() for r in [quitter, *stayers]))
            await until(lambda: transport.stats().waiters == 3)
            assert upstream.streams_closed == 0
            upstream.gate.set()
    assert {reader.data for reader in stayers} == {expected_stream(10)}
    assert upstream.hits["/sse"] == 1
    await until(lambda: upstream.streams_closed >= 1)  # counted in the server's finally
    assert upstream.streams_closed == 1


async def test_all_callers_leaving_mid_stream_closes_the_upstream_promptly(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    readers = [Reader() for _ in range(4)]
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for reader in readers:
                group.start_soon(reader.read, client, "/sse?events=10&hold=1")
            await until(lambda: all(reader.first.is_set() for reader in readers))
            group.cancel_scope.cancel()
        assert transport.stats().in_flight == 0
        # The gate never opens: the server stream ends only because we went away.
        await until(lambda: upstream.streams_closed == 1)
    assert transport.stats().cancelled_flights == 1


async def test_upstream_reset_mid_stream_gives_every_caller_its_bytes_then_an_error(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    readers = [Reader() for _ in range(5)]
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for reader in readers:
                group.start_soon(reader.read, client, "/sse?events=10&hold=1&fail=3")
            await until(lambda: all(reader.first.is_set() for reader in readers))
            upstream.gate.set()
    before_reset = expected_stream(3)[: -len(b"data: [DONE]\n\n")]
    assert {reader.data for reader in readers} == {before_reset}
    assert all(isinstance(reader.error, lib.TransportError) for reader in readers)
    assert len({id(reader.error) for reader in readers}) == 5


async def test_a_stream_past_the_body_limit_keeps_its_readers_but_takes_no_joiners(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(limits=Limits(max_body_bytes=1000))
    upstream.hold()
    attached, later = [Reader() for _ in range(3)], Reader()
    url = "/sse?events=40&hold=20&pad=100"
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for reader in attached:
                group.start_soon(reader.read, client, url)
            # 20 padded events (over 2,000 bytes) are out: the flight is past its limit.
            await until(lambda: all(reader.data.count(b"\n\n") == 20 for reader in attached))
            group.start_soon(later.read, client, url)
            await until(lambda: upstream.hits["/sse"] == 2)
            upstream.gate.set()
    assert {reader.data for reader in [*attached, later]} == {expected_stream(40, pad=100)}
    assert later.response.extensions["coalesce"].leader is True
    # Freed as it went, the body was still not downloaded again by two of the three.
    assert transport.stats().bytes_saved == 2 * len(expected_stream(40, pad=100))


async def test_a_slow_reader_keeps_its_place_and_loses_nothing(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(limits=Limits(max_body_bytes=500))
    fast = Reader()
    slow_data = b""
    upstream.hold()
    url = "/sse?events=60&pad=50&hold=1"
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with client.stream("GET", url) as slow:
            async with anyio.create_task_group() as group:
                group.start_soon(fast.read, client, url)
                await until(lambda: transport.stats().waiters == 2)
                upstream.gate.set()
                await until(lambda: fast.data.count(b"\n\n") > 5)
                # The slow reader has read nothing while the fast one runs ahead; the
                # pump pauses for it a limit ahead, and it then reads every byte.
                async for chunk in slow.aiter_raw():
                    slow_data += chunk
    assert fast.data == slow_data == expected_stream(60, pad=50)
    assert upstream.hits["/sse"] == 1


async def test_reiterating_a_finished_stream_neither_repeats_nor_loses_bytes(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with client.stream("GET", "/sse?events=5") as response:
            first = b"".join([chunk async for chunk in response.stream])
            again = b"".join([chunk async for chunk in response.stream])
    assert (first, again) == (expected_stream(5), b"")


async def test_a_follower_waits_for_each_chunk_no_longer_than_its_own_read_timeout(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    leader, follower = Reader(), Reader()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(leader.read, client, "/sse?events=5&hold=1")
            await until(leader.first.is_set)
            short = lib.AsyncClient(transport=transport, base_url=base_url, timeout=0.05)
            group.start_soon(follower.read, short, "/sse?events=5&hold=1")
            await until(lambda: follower.error is not None)
            upstream.gate.set()
        await short.aclose()
    assert leader.data == expected_stream(5)
    assert follower.data == expected_stream(1)[: -len(b"data: [DONE]\n\n")]
    assert isinstance(follower.error, lib.ReadTimeout)
    assert upstream.hits["/sse"] == 1


async def test_a_dropped_stream_collected_in_another_thread_leaves_on_its_own_loop(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    # The finalizer of a dropped stream runs wherever the garbage collector runs: in a
    # foreign thread, maybe one that holds the table's lock. It must neither block on
    # that lock nor touch the event loop's objects from there.
    transport = make_transport()
    upstream.hold()
    # Held until the end of the test; a full collection after a long run can take
    # seconds, past the default 5 s read timeout (see the sync twin in test_sync.py).
    async with lib.AsyncClient(transport=transport, base_url=base_url, timeout=60.0) as client:
        dropped = drop_into_a_cycle(
            await client.send(client.build_request("GET", "/sse?events=3&hold=1"), stream=True)
        )
        assert transport.stats().waiters == 1
        (table,) = transport._async_tables.values()
        collected = collect_garbage_holding(table.lock, dropped)
        await until(collected.is_set)
        await until(lambda: transport.stats().waiters == 0)
        assert transport.stats().cancelled_flights == 1
        await until(lambda: upstream.streams_closed == 1)
        upstream.gate.set()
