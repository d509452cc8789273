"""Big bodies: one copy for late and lagging readers, and no reader stalls another.

Against the real loopback server. A flight holds ``max_body_bytes`` in memory; past
that, what a lagging reader still needs goes to nameless temporary files (the spool),
made here in a directory of the test's own so that the test can see them come and go
through ``/proc/self/fd``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from httpx_coalesce import CoalescingTransport, Limits

from .conftest import until, until_sync
from .test_streaming import expected_stream
from .upstream import Upstream

MakeTransport = Callable[..., CoalescingTransport]

#: 200 events of about 110 bytes: 22 KB, forty times the memory bound below.
EVENTS, PAD = 200, 100
URL = f"/sse?events={EVENTS}&pad={PAD}&hold=1"
LIMITS = Limits(max_body_bytes=500)


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def open_spool_files(directory: Path) -> int:
    """Files of *directory* this process holds open (a nameless one shows as deleted)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            count += 1
    return count


@pytest.mark.anyio
async def test_a_stalled_reader_holds_nobody_and_reads_its_spilled_body_back_byte_exact(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, spool_dir: Path
) -> None:
    transport = make_transport(limits=LIMITS)
    upstream.hold()
    fast_data = b""
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with client.stream("GET", URL) as stalled:
            async with client.stream("GET", URL) as fast:
                await until(lambda: transport.stats().waiters == 2)
                upstream.gate.set()
                # Pass condition: the fast reader gets its whole body while the other
                # has read nothing at all (before, the pump waited for it forever).
                async for chunk in fast.aiter_raw():
                    fast_data += chunk
            assert open_spool_files(spool_dir) > 0  # the stalled reader's part is on disk
            stalled_data = b"".join([chunk async for chunk in stalled.aiter_raw()])
    assert fast_data == stalled_data == expected_stream(EVENTS, pad=PAD)
    assert upstream.hits["/sse"] == 1
    assert open_spool_files(spool_dir) == 0


def test_a_stalled_reader_holds_no_thread_and_reads_its_spilled_body_back_byte_exact(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, spool_dir: Path
) -> None:
    transport = make_transport(limits=LIMITS)
    upstream.hold()
    fast_data: list[bytes] = []
    with lib.Client(transport=transport, base_url=base_url) as client:
        with client.stream("GET", URL) as stalled:  # the leader: its thread sent the request

            def read_fast() -> None:
                with client.stream("GET", URL) as fast:
                    fast_data.extend(fast.iter_raw())

            reader = threading.Thread(target=read_fast)
            reader.start()
            until_sync(lambda: transport.stats().waiters == 2)
            upstream.gate.set()
            reader.join(timeout=30)
            assert not reader.is_alive()  # done while the other holds its unread response
            assert open_spool_files(spool_dir) > 0
            stalled_data = b"".join(stalled.iter_raw())
    assert b"".join(fast_data) == stalled_data == expected_stream(EVENTS, pad=PAD)
    assert open_spool_files(spool_dir) == 0


@pytest.mark.anyio
async def test_the_spool_is_gone_once_its_readers_are_cancelled(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, spool_dir: Path
) -> None:
    transport = make_transport(limits=LIMITS)
    upstream.hold()
    spilled = anyio.Event()

    async def stall(client: Any) -> None:
        async with client.stream("GET", URL):
            await anyio.sleep_forever()

    async def read_half(client: Any) -> None:
        async with client.stream("GET", URL) as response:
            got = 0
            async for chunk in response.aiter_raw():
                got += len(chunk)
                if got > 10 * LIMITS.max_body_bytes and open_spool_files(spool_dir) > 0:
                    spilled.set()
                    await anyio.sleep_forever()

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(stall, client)
            await until(lambda: transport.stats().waiters == 1)
            group.start_soon(read_half, client)
            await until(lambda: transport.stats().waiters == 2)
            upstream.gate.set()
            await spilled.wait()
            group.cancel_scope.cancel()
    assert open_spool_files(spool_dir) == 0


@pytest.mark.anyio
async def test_the_spool_is_gone_after_the_leading_caller_crashes_and_the_upstream_breaks(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, spool_dir: Path
) -> None:
    transport = make_transport(limits=LIMITS)
    upstream.hold()
    url = f"/sse?events={EVENTS}&pad={PAD}&hold=1&fail={EVENTS // 2}"
    follower_data = b""
    follower_error: BaseException | None = None

    async def lead_and_crash(client: Any) -> None:
        nonlocal follower_data, follower_error
        async with client.stream("GET", url) as leader:
            assert leader.extensions["coalesce"].leader
            async with client.stream("GET", url) as follower:
                await until(lambda: transport.stats().waiters == 2)
                upstream.gate.set()
                try:
                    async for chunk in follower.aiter_raw():
                        follower_data += chunk
                except lib.TransportError as error:
                    follower_error = error
                # The leader reads nothing: what it still needs past the memory
                # bound is spooled for it, until the upstream breaks.
                raise RuntimeError("the leading caller's own bug")

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        with pytest.raises(RuntimeError, match="the leading caller's own bug"):
            await lead_and_crash(client)
    assert follower_error is not None
    assert follower_data == expected_stream(EVENTS // 2, pad=PAD)[: len(follower_data)]
    assert len(follower_data) > 10 * LIMITS.max_body_bytes
    assert open_spool_files(spool_dir) == 0


@pytest.mark.anyio
async def test_a_late_reader_and_a_lagging_reader_get_the_very_same_body_object(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    url = "/big?size=100000"  # past the 16 KiB read whole before the headers
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        # Nothing of the body is pulled before someone reads it, so the flight still
        # takes joiners once the first caller has its headers.
        async with (
            client.stream("GET", url) as live,
            client.stream("GET", url) as lagging,
            client.stream("GET", url) as late,
        ):
            assert upstream.hits["/big"] == 1
            first = await live.aiter_raw().__anext__()  # the first reader reads live
            assert 0 < len(first) < 100_000
            # A reader that starts while another reads: it waits for the whole and
            # takes it as one object; a reader that starts after the end, the same one.
            await lagging.aread()
            await late.aread()
            assert lagging.content is late.content
            assert len(late.content) == 100_000


@pytest.mark.anyio
async def test_callers_that_read_whole_responses_hold_one_body_object(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    responses: list[Any] = []

    async def get(client: Any) -> None:
        responses.append(await client.get("/big?size=100000"))  # read() inside send()

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(get, client)
            await until(lambda: transport.stats().waiters == 3)
            upstream.gate.set()
    # Pass condition: one upstream call, and each caller's .content is the same object
    # (the first reader included: it, too, sees no byte before the last).
    assert upstream.hits["/big"] == 1
    assert responses[0].content is responses[1].content is responses[2].content
    assert len(responses[0].content) == 100_000


def test_threads_that_start_reading_late_share_the_very_same_body_object(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    url = "/big?size=100000"
    with (
        lib.Client(transport=transport, base_url=base_url) as client,
        client.stream("GET", url) as live,
        client.stream("GET", url) as lagging,
        client.stream("GET", url) as late,
    ):
        assert upstream.hits["/big"] == 1
        assert 0 < len(next(live.iter_raw())) < 100_000
        lagging.read()
        late.read()
        assert lagging.content is late.content
        assert len(late.content) == 100_000


#: Six parts of 8 KiB, of known length; the server sends three, then holds the rest
#: until the gate opens.
HELD_URL = "/trickle?parts=6&size=8192&gap=0&hold=3"
HELD_BODY = b"".join(bytes([65 + n]) * 8192 for n in range(6))


@pytest.mark.anyio
async def test_a_reader_iterating_from_mid_body_gets_what_came_at_once_then_the_rest_live(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    async with (
        lib.AsyncClient(transport=transport, base_url=base_url) as client,
        client.stream("GET", HELD_URL) as live,
        client.stream("GET", HELD_URL) as late,
    ):
        assert upstream.hits["/trickle"] == 1
        live_chunks = live.aiter_raw()
        live_data = b""
        while len(live_data) < 3 * 8192:
            live_data += await live_chunks.__anext__()
        await until(upstream.holding.is_set)
        late_chunks = late.aiter_raw()
        with anyio.fail_after(10):  # a hang guard only: before, this waited for the end
            first = await late_chunks.__anext__()
        # Pass condition: the late reader has everything that came while the upstream
        # still holds the rest (as alone, it would have these bytes by now).
        assert not upstream.gate.is_set()
        assert first == live_data
        upstream.gate.set()
        live_data += b"".join([chunk async for chunk in live_chunks])
        late_data = first + b"".join([chunk async for chunk in late_chunks])
    assert live_data == late_data == HELD_BODY


def test_a_thread_iterating_from_mid_body_gets_what_came_at_once_then_the_rest_live(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    late_data: list[bytes] = []
    first = threading.Event()

    with (
        lib.Client(transport=transport, base_url=base_url) as client,
        client.stream("GET", HELD_URL) as live,
        client.stream("GET", HELD_URL) as late,
    ):

        def read_late() -> None:
            for chunk in late.iter_raw():
                late_data.append(chunk)
                first.set()

        assert upstream.hits["/trickle"] == 1
        live_chunks = live.iter_raw()
        live_data = b""
        while len(live_data) < 3 * 8192:
            live_data += next(live_chunks)
        until_sync(upstream.holding.is_set)
        reader = threading.Thread(target=read_late)
        reader.start()
        got_first = first.wait(timeout=10)  # a hang guard only: before, it waited for the end
        upstream.gate.set()
        # Pass condition: the late reader had everything that came while the upstream
        # still held the rest.
        assert got_first
        assert late_data[0] == live_data
        live_data += b"".join(live_chunks)
        reader.join(timeout=30)
        assert not reader.is_alive()
    assert live_data == b"".join(late_data) == HELD_BODY


@pytest.mark.anyio
async def test_a_reader_waiting_for_the_whole_body_times_out_only_if_no_byte_comes_within_its_timeout(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    # Six parts 0.2 s apart: 1 s in all, twice the follower's read timeout, each part
    # well within it. Alone, that follower would read the body without a timeout.
    url = "/trickle?parts=6&size=8192&gap=0.2"
    async with lib.AsyncClient(transport=transport, base_url=base_url, timeout=10) as client:
        async with client.stream("GET", url) as live:
            async with client.stream("GET", url, timeout=lib.Timeout(10, read=0.5)) as waiting:
                assert not waiting.extensions["coalesce"].leader
                chunks = live.aiter_raw()
                await chunks.__anext__()  # another reads live: the follower waits for the whole
                async with anyio.create_task_group() as group:
                    group.start_soon(waiting.aread)
                    async for _ in chunks:
                        pass
    assert waiting.content == b"".join(bytes([65 + n]) * 8192 for n in range(6))
    assert upstream.hits["/trickle"] == 1


#: Past the memory bound after a few events, then held by the server until the gate opens.
LONE_URL = f"/sse?events={EVENTS}&pad={PAD}&hold=50"


@pytest.mark.anyio
async def test_a_lone_reader_past_the_bound_cancelled_mid_read_closes_the_upstream_and_leaves_no_flight(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(limits=LIMITS)
    upstream.hold()
    got = b""

    async def read_alone(client: Any) -> None:
        nonlocal got
        async with client.stream("GET", LONE_URL) as response:
            async for chunk in response.aiter_raw():
                got += chunk

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(read_alone, client)
            # Everything before the hold is read: the reader now waits in its own pull
            # of the next chunk (past the bound, nobody can join; it pulls it itself).
            await until(lambda: got.count(b"\n\n") == 50)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
        # Pass condition: the flight is gone (the fixture checks no seat is left), the
        # server saw its stream closed although the gate never opened, and the next
        # identical request is a new flight that reads the whole body.
        assert transport.stats().in_flight == 0
        await until(lambda: upstream.streams_closed == 1)
        upstream.gate.set()
        async with client.stream("GET", LONE_URL) as response:
            again = await response.aread()
    assert again == expected_stream(EVENTS, pad=PAD)
    assert upstream.hits["/sse"] == 2


@pytest.mark.anyio
async def test_a_lone_reader_past_the_bound_gets_the_upstream_break_as_it_would_alone(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    url = f"/sse?events={EVENTS}&pad={PAD}&fail={EVENTS // 2}"

    async def read(transport: Any) -> tuple[bytes, BaseException | None]:
        got = b""
        async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
            try:
                async with client.stream("GET", url) as response:
                    async for chunk in response.aiter_raw():
                        got += chunk
            except Exception as error:
                return got, error
        return got, None

    alone = await read(lib.AsyncHTTPTransport())
    coalesced = await read(make_transport(limits=LIMITS))
    # Pass condition: the same bytes, then the same error, as the inner transport alone.
    assert coalesced[0] == alone[0] == expected_stream(EVENTS // 2, pad=PAD)[: -len(b"data: [DONE]\n\n")]
    assert type(coalesced[1]) is type(alone[1])
    assert isinstance(alone[1], lib.TransportError)


def test_a_lone_thread_past_the_bound_gets_the_upstream_break_as_it_would_alone(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    url = f"/sse?events={EVENTS}&pad={PAD}&fail={EVENTS // 2}"

    def read(transport: Any) -> tuple[bytes, BaseException | None]:
        got = b""
        with lib.Client(transport=transport, base_url=base_url) as client:
            try:
                with client.stream("GET", url) as response:
                    for chunk in response.iter_raw():
                        got += chunk
            except Exception as error:
                return got, error
        return got, None

    alone = read(lib.HTTPTransport())
    coalesced = read(make_transport(limits=LIMITS))
    assert coalesced[0] == alone[0] == expected_stream(EVENTS // 2, pad=PAD)[: -len(b"data: [DONE]\n\n")]
    assert type(coalesced[1]) is type(alone[1])
    assert isinstance(alone[1], lib.TransportError)
