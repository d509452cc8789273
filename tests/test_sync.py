"""The sync face: threads sharing one transport through sync httpx/httpx2 clients."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import pytest

from httpx_coalesce import CoalescingTransport

from .conftest import collect_garbage_holding, drop_into_a_cycle, until_sync
from .test_streaming import expected_stream
from .upstream import Upstream

MakeTransport = Callable[..., CoalescingTransport]


def run_threads(count: int, job: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(job, range(count)))


def test_hundred_threads_posting_the_same_body_make_one_upstream_call(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(100) as pool:
        futures = [pool.submit(client.post, "/echo", json={"q": "same"}) for _ in range(100)]
        until_sync(lambda: transport.stats().waiters == 100)
        upstream.gate.set()
        responses = [future.result() for future in futures]
    assert upstream.hits["/echo"] == 1
    assert {response.content for response in responses} == {responses[0].content}
    assert len({id(response.content) for response in responses}) == 1
    assert sum(response.extensions["coalesce"].leader for response in responses) == 1


def test_threads_of_different_tenants_never_share(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    tokens = [f"Bearer tenant-{index % 4}" for index in range(40)]
    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(40) as pool:
        futures = [
            pool.submit(client.post, "/echo", json={"q": "same"}, headers={"authorization": token})
            for token in tokens
        ]
        until_sync(lambda: transport.stats().waiters == 40)
        upstream.gate.set()
        seen = [
            (token, future.result().json()["auth_sha"]) for token, future in zip(tokens, futures, strict=True)
        ]
    assert upstream.hits["/echo"] == 4
    assert all(sha == hashlib.sha256(token.encode()).hexdigest() for token, sha in seen)


def test_upstream_error_reaches_every_thread_as_its_own_exception(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call(client: Any) -> None:
        try:
            client.post("/reset", json={})
        except lib.TransportError as error:
            with lock:
                errors.append(error)

    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, client) for _ in range(8)]
        until_sync(lambda: transport.stats().waiters == 8)
        upstream.gate.set()
        for future in futures:
            future.result()
    assert len(errors) == 8
    assert len({id(error) for error in errors}) == 8
    assert upstream.hits["/reset"] == 1


def test_threads_stream_one_live_upstream_stream(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    firsts = [threading.Event() for _ in range(10)]

    def read(index: int, client: Any) -> bytes:
        data = b""
        with client.stream("GET", "/sse?events=10&hold=1") as response:
            for chunk in response.iter_raw():
                data += chunk
                firsts[index].set()
        return data

    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(read, index, client) for index in range(10)]
        for first in firsts:
            assert first.wait(10)
        assert not upstream.gate.is_set()
        upstream.gate.set()
        results = [future.result() for future in futures]
    assert results == [expected_stream(10)] * 10
    assert upstream.hits["/sse"] == 1
    until_sync(lambda: upstream.streams_closed >= 1)  # counted in the server's finally
    assert upstream.streams_closed == 1


def test_threads_leaving_mid_stream_stop_the_upstream_stream(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    everyone_read_one = threading.Barrier(4)

    def read_first(client: Any) -> bytes:
        with client.stream("GET", "/sse?events=10&hold=1") as response:
            for chunk in response.iter_raw():
                everyone_read_one.wait(10)
                return bytes(chunk)
        return b""

    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(4) as pool:
        firsts = list(pool.map(lambda _: read_first(client), range(4)))
        stats = transport.stats()
        assert (stats.cancelled_flights, stats.in_flight) == (1, 0)
        # A pump thread cannot be interrupted mid-read: it stops at the next chunk.
        upstream.gate.set()
        until_sync(lambda: upstream.streams_closed == 1)
    assert firsts == [b'data: {"n":0}\n\n'] * 4
    assert upstream.hits["/sse"] == 1


@pytest.mark.parametrize("path", ["/empty", "/gzip"])
def test_bodiless_and_encoded_responses_work_for_threads(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, path: str
) -> None:
    transport = make_transport()
    with lib.Client(transport=transport, base_url=base_url) as client:
        responses = run_threads(4, lambda _: client.request("POST" if path == "/empty" else "GET", path))
    if path == "/empty":
        assert {response.status_code for response in responses} == {204}
    else:
        assert {response.text for response in responses} == {"coalesced and compressed " * 200}


def test_a_transport_still_works_for_another_client_after_one_client_closed_it(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    with lib.Client(transport=transport, base_url=base_url) as first:
        first.get("/echo")
    # httpx transports reopen their pool on use; the coalescing layer must not be the
    # part that breaks (it once shut its worker pool down here, stranding the leader).
    with lib.Client(transport=transport, base_url=base_url) as second:
        assert second.get("/echo").status_code == 200


def test_the_window_serves_sync_clients_too(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(window=30.0)
    with lib.Client(transport=transport, base_url=base_url) as client:
        first = client.post("/echo", json={"q": "window"})
        with client.stream("POST", "/echo", json={"q": "window"}) as late:
            body = late.read()
            assert b"".join(late.stream) == b""
    assert body == first.content
    assert late.extensions["coalesce"].from_window
    assert upstream.hits["/echo"] == 1


def test_a_dropped_stream_collected_while_the_table_lock_is_held_does_not_deadlock(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    # The garbage collector runs a dropped stream's finalizer in whatever thread it runs,
    # at any allocation: also inside the transport's own locked sections. A finalizer
    # that took the table's (non-reentrant) lock there would hang that thread forever,
    # and every caller after it.
    transport = make_transport()
    upstream.hold()
    # The stream is held until the end of the test, and a full collection after a long
    # run (finalizers of every client earlier tests left behind) can take seconds: a read
    # timeout of the default 5 s would end the flight before its stream is dropped.
    with lib.Client(transport=transport, base_url=base_url, timeout=60.0) as client:
        dropped = drop_into_a_cycle(
            client.send(client.build_request("GET", "/sse?events=3&hold=1"), stream=True)
        )
        assert transport.stats().waiters == 1
        collected = collect_garbage_holding(transport._sync_table.lock, dropped)
        assert collected.wait(10), "the finalizer deadlocked on the table lock"
        until_sync(lambda: transport.stats().waiters == 0)
        assert transport.stats().cancelled_flights == 1
        # A pump thread cannot be interrupted mid-read: it stops at the next chunk. Wait
        # for that here, or the server counts this stream during the next test.
        upstream.gate.set()
        until_sync(lambda: upstream.streams_closed == 1)


def test_a_thread_joining_while_the_lone_leader_reads_gets_what_came_at_once_then_the_rest(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    url = "/sse?events=10&hold=5"
    leader_data, joiner_data = bytearray(), bytearray()
    joiner_first = threading.Event()

    def read(response: Any, into: bytearray, first: threading.Event | None = None) -> None:
        for chunk in response.iter_raw():
            into.extend(chunk)
            if first is not None:
                first.set()

    with lib.Client(transport=transport, base_url=base_url) as client, ThreadPoolExecutor(2) as pool:
        with client.stream("GET", url) as leader:
            # Alone, the leader pulls each chunk in its own thread; once the server
            # holds, it waits in its own read of the sixth event.
            leading = pool.submit(read, leader, leader_data)
            until_sync(lambda: leader_data.count(b"\n\n") == 5)
            with client.stream("GET", url) as joiner:
                joining = pool.submit(read, joiner, joiner_data, joiner_first)
                got_first = joiner_first.wait(10)  # a hang guard only
                # Pass condition: the joiner has its head and the five events at once,
                # while the server still holds the rest; then both read to the end.
                assert got_first
                assert not upstream.gate.is_set()
                assert bytes(joiner_data) == expected_stream(10)[: len(joiner_data)]
                assert joiner_data.count(b"\n\n") >= 5
                upstream.gate.set()
                joining.result(timeout=30)
            leading.result(timeout=30)
    assert bytes(leader_data) == bytes(joiner_data) == expected_stream(10)
    assert upstream.hits["/sse"] == 1
