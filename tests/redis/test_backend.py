"""The Redis backend within one test process: each transport has its own backend, so
two transports are two members of a fleet, as two processes would be."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import httpx
import orjson
import pytest
import redis

from httpx_coalesce import CoalescingTransport, Limits

from ..conftest import until, until_in_thread, until_sync
from ..upstream import Upstream
from .members import (
    Members,
    Outcome,
    backend,
    finished_round,
    get_past_a_planted_lease,
    lead_and_follow,
    plant_round,
    play_round,
    records,
    streaming,
)

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class GatedFailure(httpx.AsyncBaseTransport):
    """An upstream that fails to connect (or raises *error*), once the test lets it."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        self.message = message
        self.error = error
        self.calls = 0
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.arrived.set()
        while not self.release.is_set():
            await anyio.sleep(0.002)
        if self.error is not None:
            raise self.error
        raise httpx.ConnectError(self.message, request=request)


class Abort(BaseException):
    """A framework's own abort signal, built on BaseException."""


class Counting:
    """A transport of either library that counts the calls it gets and answers none."""

    calls = 0

    async def handle_async_request(self, request: Any) -> Any:
        self.calls += 1
        raise AssertionError("this process should have followed, not sent")


async def test_two_transports_make_one_upstream_call(
    lib: ModuleType, upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower")
    upstream.hold()
    bodies: list[bytes] = []
    async with (
        lib.AsyncClient(transport=leader, base_url=base_url) as first,
        lib.AsyncClient(transport=follower, base_url=base_url) as second,
    ):

        async def call(client: Any) -> None:
            response = await client.post("/echo", json={"q": "fleet"})
            assert response.status_code == 200
            bodies.append(response.content)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call, first)
            await until(lambda: upstream.hits["/echo"] == 1)
            for _ in range(3):
                group.start_soon(call, second)
            await until(member.following("follower"))
            upstream.gate.set()

    assert upstream.hits["/echo"] == 1
    assert len(bodies) == 6
    assert len(set(bodies)) == 1
    led, followed = leader.stats(), follower.stats()
    assert (led.upstream_calls, led.redis_led, led.redis_followed) == (1, 1, 0)
    assert (followed.upstream_calls, followed.redis_led, followed.redis_followed) == (0, 0, 1)
    assert followed.coalesced == 2
    assert led.redis_errors == followed.redis_errors == 0


def test_sync_clients_in_two_transports_make_one_upstream_call(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower")
    upstream.hold()
    bodies: list[bytes] = []
    with (
        httpx.Client(transport=leader, base_url=base_url) as first,
        httpx.Client(transport=follower, base_url=base_url) as second,
    ):

        def call(client: httpx.Client) -> None:
            bodies.append(client.post("/echo", json={"q": "fleet"}).content)

        threads = [threading.Thread(target=call, args=(first,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        until_sync(lambda: upstream.hits["/echo"] == 1)
        threads += [threading.Thread(target=call, args=(second,)) for _ in range(3)]
        for thread in threads[3:]:
            thread.start()
        until_sync(member.following("follower"))
        upstream.gate.set()
        for thread in threads:
            thread.join()

    assert upstream.hits["/echo"] == 1
    assert len(bodies) == 6
    assert len(set(bodies)) == 1
    assert (leader.stats().redis_led, follower.stats().redis_followed) == (1, 1)


async def test_streamed_response_reaches_a_follower_live(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower")
    upstream.hold()
    firsts: list[bytes] = []
    bodies: list[bytes] = []
    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
    ):

        async def call(client: httpx.AsyncClient) -> None:
            async with client.stream("GET", "/sse?events=3&hold=1") as response:
                chunks = response.aiter_raw()
                firsts.append(await chunks.__anext__())
                bodies.append(firsts[-1] + b"".join([chunk async for chunk in chunks]))

        async with anyio.create_task_group() as group:
            group.start_soon(call, first)
            await until(upstream.holding.is_set)
            group.start_soon(call, second)
            # The follower has the first event while the upstream still holds the rest.
            await until(lambda: len(firsts) == 2)
            assert not upstream.gate.is_set()
            upstream.gate.set()

    assert upstream.hits["/sse"] == 1
    assert firsts[0] == firsts[1] == b'data: {"n":0}\n\n'
    assert bodies[0] == bodies[1]
    assert bodies[0].endswith(b"data: [DONE]\n\n")


async def test_upstream_connect_error_reaches_followers_as_the_same_class(
    lib: ModuleType, member: Members
) -> None:
    upstream = GatedFailure("[Errno 111] Connection refused")
    leader = member("leader", transport=upstream)
    follower = member("follower")
    errors: dict[str, BaseException] = {}
    # Both clients send the same headers, so the two libraries share one key (their
    # default Accept-Encoding differs when one of them can decode zstd).
    headers = {"user-agent": "test", "accept-encoding": "gzip"}
    async with (
        httpx.AsyncClient(transport=leader, headers=headers) as first,
        lib.AsyncClient(transport=follower, headers=headers) as second,
    ):

        async def call(name: str, client: Any) -> None:
            try:
                await client.get("http://upstream.invalid/models")
            except Exception as error:
                errors[name] = error

        await play_round(
            first,
            second,
            call,
            arrived=upstream.arrived.is_set,
            following=member.following("follower"),
            release=upstream.release.set,
        )

    assert isinstance(errors["leader"], httpx.ConnectError)
    followed = errors["follower"]
    assert isinstance(followed, lib.ConnectError)
    assert str(followed) == "[Errno 111] Connection refused"
    assert followed.request.url == "http://upstream.invalid/models"
    assert follower.stats().redis_followed == 1
    assert follower.stats().upstream_calls == 0


async def test_a_base_exception_in_the_leading_process_fails_followers_elsewhere_without_a_second_call(
    lib: ModuleType, member: Members
) -> None:
    abort = Abort("stop")
    upstream = GatedFailure("", error=abort)
    leader = member("leader", transport=upstream)
    second_upstream = Counting()
    follower = member("follower", transport=second_upstream)
    errors: dict[str, BaseException] = {}
    headers = {"user-agent": "test", "accept-encoding": "gzip"}
    async with (
        httpx.AsyncClient(transport=leader, headers=headers) as first,
        lib.AsyncClient(transport=follower, headers=headers) as second,
    ):

        async def call(name: str, client: Any) -> None:
            try:
                await client.get("http://upstream.invalid/models")
            except BaseException as error:  # the Abort itself, in the leader's own task
                errors[name] = error

        await play_round(
            first,
            second,
            call,
            arrived=upstream.arrived.is_set,
            following=member.following("follower"),
            release=upstream.release.set,
        )

    assert errors["leader"] is abort
    followed = errors["follower"]
    assert type(followed) is lib.TransportError
    assert "Abort" in str(followed)
    # The follower's process never sent it: no second leader was elected for it.
    assert (upstream.calls, second_upstream.calls) == (1, 0)


@asyncio_only
async def test_upstream_failure_mid_stream_reaches_a_streaming_follower_after_its_bytes(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower")
    upstream.hold()
    outcomes: dict[str, Outcome] = {}
    await lead_and_follow(
        leader,
        follower,
        base_url,
        streaming("/sse?events=5&hold=1&fail=2", outcomes, httpx.TransportError),
        arrived=upstream.holding.is_set,
        following=member.following("follower"),
        release=upstream.gate.set,
    )

    assert outcomes["leader"] == outcomes["follower"]
    received, error = outcomes["leader"]
    assert received == b'data: {"n":0}\n\ndata: {"n":1}\n\n'
    # The class, not httpcore's wording of it.
    assert error is not None
    assert error.startswith("RemoteProtocolError: ")
    assert upstream.hits["/sse"] == 1


async def leader_leaves_while_a_follower_waits(
    leader: CoalescingTransport,
    follower: CoalescingTransport,
    upstream: Upstream,
    base_url: str,
    member: Members,
    before_answer: Callable[[], None] | None = None,
) -> list[bytes]:
    """The leading process's callers all leave while the follower's process follows the
    round; the upstream answers once the leader's flight is gone (and *before_answer*
    has run). The bodies the callers got."""
    upstream.hold()
    bodies: list[bytes] = []
    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
    ):

        async def call(client: httpx.AsyncClient) -> None:
            bodies.append((await client.post("/echo", json={"q": "fleet"})).content)

        async with anyio.create_task_group() as group:
            async with anyio.create_task_group() as leader_callers:
                leader_callers.start_soon(call, first)
                await until(lambda: upstream.hits["/echo"] == 1)
                group.start_soon(call, second)
                await until(member.following("follower"))
                leader_callers.cancel_scope.cancel()
            await until(lambda: leader.stats().cancelled_flights == 1)
            if before_answer is not None:
                before_answer()
            upstream.gate.set()
    return bodies


@asyncio_only
async def test_leader_whose_callers_all_leave_keeps_its_call_for_a_follower_elsewhere(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower")
    # The leading process's flight is gone, its upstream call is not: a process still
    # follows it, and would otherwise send the call a second time.
    bodies = await leader_leaves_while_a_follower_waits(leader, follower, upstream, base_url, member)

    assert len(bodies) == 1
    assert orjson.loads(bodies[0])["hit"] == 1
    assert upstream.hits["/echo"] == 1
    assert upstream.disconnects == 0
    assert (follower.stats().redis_led, follower.stats().redis_followed) == (0, 1)


@asyncio_only
async def test_leader_whose_callers_all_left_writes_its_last_records_while_it_looks_for_followers(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    make_transport: MakeTransport,
    monkeypatch: pytest.MonkeyPatch,
    member: Members,
) -> None:
    # A short lease: the leader looks for followers every half heartbeat (0.1 s here).
    leading = backend(redis_url, prefix, "leader", lease=0.6)
    leader = make_transport(backend=leading)
    follower = member("follower")

    def slow_last_write_until_the_next_look() -> None:
        # The write of the response's records (one, with the end) lasts until the
        # leader has looked for followers again: that look must not stop the call
        # (and the write) because the response is complete.
        ops: Any = leading._clients.async_ops()
        read, append = ops.read, ops.append
        looks: list[anyio.Event] = []

        async def looking(*args: Any) -> Any:
            for look in looks:
                look.set()
            return await read(*args)

        async def slow_last_write(lease: Any, records: Any, *args: Any) -> Any:
            if records and args[-1]:
                looks.append(anyio.Event())
                await looks[-1].wait()
            return await append(lease, records, *args)

        monkeypatch.setattr(ops, "read", looking)
        monkeypatch.setattr(ops, "append", slow_last_write)

    bodies = await leader_leaves_while_a_follower_waits(
        leader, follower, upstream, base_url, member, slow_last_write_until_the_next_look
    )

    assert len(bodies) == 1
    assert orjson.loads(bodies[0])["hit"] == 1
    assert upstream.hits["/echo"] == 1
    assert (follower.stats().redis_led, follower.stats().redis_followed) == (0, 1)


@asyncio_only
async def test_leader_keeps_its_call_while_a_second_follower_takes_over_from_one_that_left(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    leader = member("leader")
    first_follower = member("first")
    second_follower = member("second")
    upstream.hold()
    bodies: list[bytes] = []

    def watched() -> bool:
        return any(True for _ in redis_client.scan_iter(match=f"{prefix}watch:*"))

    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as leading,
        httpx.AsyncClient(transport=first_follower, base_url=base_url) as first,
        httpx.AsyncClient(transport=second_follower, base_url=base_url) as second,
    ):

        async def call(client: httpx.AsyncClient) -> None:
            bodies.append((await client.post("/echo", json={"q": "fleet"})).content)

        async with anyio.create_task_group() as group:
            async with anyio.create_task_group() as leaving:
                leaving.start_soon(call, leading)
                await until(lambda: upstream.hits["/echo"] == 1)
                leaving.start_soon(call, first)
                await until(member.following("first"))
                group.start_soon(call, second)
                await until(member.following("second"))
                # While the leader's own callers stay, followers mark nothing.
                assert not watched()
                # The leader's callers and the first follower go: the leader asks its
                # followers to show themselves, and the second takes the watch key
                # before the leader gives up on the fleet.
                leaving.cancel_scope.cancel()
            await until(lambda: leader.stats().cancelled_flights == 1)
            await until(watched)
            assert upstream.disconnects == 0
            upstream.gate.set()

    assert len(bodies) == 1
    assert orjson.loads(bodies[0])["hit"] == 1
    assert upstream.hits["/echo"] == 1
    assert (second_follower.stats().redis_led, second_follower.stats().redis_followed) == (0, 1)


@asyncio_only
async def test_leader_whose_callers_all_leave_stops_its_call_when_nobody_follows(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    # A short lease: the leader looks for followers every half heartbeat (0.1 s here).
    leader = member("leader", lease=0.6)
    upstream.hold()

    def leased() -> bool:
        return any(True for _ in redis_client.scan_iter(match=f"{prefix}lease:*"))

    async with httpx.AsyncClient(transport=leader, base_url=base_url) as client:
        async with anyio.create_task_group() as callers:
            callers.start_soon(client.post, "/echo")
            await until(lambda: upstream.hits["/echo"] == 1)
            callers.cancel_scope.cancel()
        # Nobody follows the round anywhere: the call is cancelled, as without Redis.
        await until(lambda: upstream.disconnects == 1)
        # Then the round ends: its last record (the abort) releases the lease. The
        # upstream sees the disconnect before that write is done, so the test waits
        # for it rather than end first (and find the lease in Redis, within its TTL).
        await until_in_thread(lambda: not leased())
    assert leader.stats().cancelled_flights == 1


@asyncio_only
async def test_follower_not_yet_answered_sends_its_own_request_when_the_body_is_too_large(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    # The leader publishes at most its max_body_bytes. This follower buffers a body of
    # this length (its own limit is larger), so it has handed nothing out yet.
    leader = member("leader", limits=Limits(max_body_bytes=1000))
    follower = member("follower")
    upstream.hold()
    sizes: list[int] = []

    async def call(name: str, client: httpx.AsyncClient) -> None:
        sizes.append(len((await client.get("/big?size=5000")).content))

    await lead_and_follow(
        leader,
        follower,
        base_url,
        call,
        arrived=lambda: upstream.hits["/big"] == 1,
        following=member.following("follower"),
        release=upstream.gate.set,
    )

    assert sizes == [5000, 5000]
    assert upstream.hits["/big"] == 2
    assert (follower.stats().redis_followed, follower.stats().upstream_calls) == (0, 1)
    [stream] = records(redis_client, prefix).values()
    assert stream[-1] == (b"l", b"")


@asyncio_only
async def test_streaming_follower_gets_a_read_error_when_the_body_grows_too_large(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader", limits=Limits(max_body_bytes=500))
    follower = member("follower")
    upstream.hold()
    outcomes: dict[str, Outcome] = {}
    received: dict[str, bytes] = {}
    await lead_and_follow(
        leader,
        follower,
        base_url,
        streaming("/sse?events=3&hold=1&pad=300", outcomes, httpx.ReadError, received),
        arrived=upstream.holding.is_set,
        # The upstream answers on only once the follower's caller has the response and
        # the first event: a follower that has handed out nothing yet when it learns of
        # the limit sends its own request instead (and gets the whole body), which a
        # Redis write or read slowed past its timeout would otherwise make it do.
        following=lambda: "follower" in received,
        release=upstream.gate.set,
    )

    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert leader_body.endswith(b"data: [DONE]\n\n")
    follower_body, follower_error = outcomes["follower"]
    assert follower_error == "ReadError: the shared response passed the body size limit"
    assert leader_body.startswith(follower_body)
    assert follower_body.startswith(b'data: {"n":0}')
    assert upstream.hits["/sse"] == 1


@asyncio_only
async def test_leader_whose_lease_vanished_takes_it_back_and_keeps_its_follower(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    leader = member("leader", lease=1.0)
    follower = member("follower", lease=1.0)
    upstream.hold()
    hits: dict[str, int] = {}

    async def call(name: str, client: httpx.AsyncClient) -> None:
        hits[name] = orjson.loads((await client.post("/echo", json={"q": 1})).content)["hit"]

    async def lose_the_lease() -> None:
        [lease] = redis_client.keys(f"{prefix}lease:*")
        token = redis_client.get(lease)
        # As if Redis had lost it (evicted, or restarted): nobody else leads the
        # key, so the leader takes it back with its own token.
        redis_client.delete(lease)
        await until(lambda: redis_client.get(lease) == token)

    await lead_and_follow(
        leader,
        follower,
        base_url,
        call,
        arrived=lambda: upstream.hits["/echo"] == 1,
        following=member.following("follower"),
        release=upstream.gate.set,
        meanwhile=lose_the_lease,
    )

    assert hits == {"leader": 1, "follower": 1}


@asyncio_only
async def test_leader_whose_lease_another_took_ends_its_round_for_its_followers(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    leader = member("leader", lease=1.0)
    follower = member("follower", lease=1.0)
    upstream.hold()
    hits: dict[str, int] = {}
    #: The lease's key, and the token the leader had written in it.
    taken: list[tuple[bytes | str, str]] = []

    async def call(name: str, client: httpx.AsyncClient) -> None:
        hits[name] = orjson.loads((await client.post("/echo", json={"q": 1})).content)["hit"]

    async def another_takes_the_lease() -> None:
        [lease] = redis_client.keys(f"{prefix}lease:*")
        token = redis_client.get(lease)
        assert isinstance(token, bytes)
        taken.append((lease, token.decode()))
        [round_key] = redis_client.keys(f"{prefix}round:*")
        # As if the leader had been cut off past its lease and another process had
        # taken the lease: the lease only elects, so newcomers would join the other
        # round, while this one goes on for its follower (its heartbeat renewed).
        other = "0123456789abcdef"
        redis_client.set(lease, other, px=1500)
        renewed_at = redis_client.pttl(round_key)
        await until(lambda: redis_client.pttl(round_key) > renewed_at)
        assert redis_client.get(lease) == other.encode()

    await lead_and_follow(
        leader,
        follower,
        base_url,
        call,
        arrived=lambda: upstream.hits["/echo"] == 1,
        following=member.following("follower"),
        release=upstream.gate.set,
        meanwhile=another_takes_the_lease,
    )

    # The other process's lease was never anybody's: gone with the test.
    [(lease, old_token)] = taken
    redis_client.delete(lease)
    assert hits == {"leader": 1, "follower": 1}
    streams = records(redis_client, prefix)
    [name] = streams
    assert name.endswith(old_token)
    assert [kind for kind, _ in streams[name]] == [b"h", b"c", b"e"]


@asyncio_only
async def test_follower_stops_waiting_for_a_silent_leader_after_follower_wait(
    upstream: Upstream, base_url: str, member: Members
) -> None:
    leader = member("leader")
    follower = member("follower", follower_wait=0.2)
    upstream.hold()

    async def call(name: str, client: httpx.AsyncClient) -> None:
        await client.get("/echo")

    await lead_and_follow(
        leader,
        follower,
        base_url,
        call,
        arrived=lambda: upstream.hits["/echo"] == 1,
        # The leader is alive (its lease renewed) but silent: the follower goes alone.
        following=lambda: upstream.hits["/echo"] == 2,
        release=upstream.gate.set,
    )

    assert (follower.stats().redis_followed, follower.stats().upstream_calls) == (0, 1)


@asyncio_only
async def test_late_follower_of_a_replaced_round_gets_the_successors_response(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    # A round that finished, then a dead round pointing to it, as a follower that
    # noticed its leader's death only after the successor was done would find them.
    url = f"{base_url}/echo"
    keys, finished = await finished_round(member("a"), url, redis_client, prefix)
    dead = "0123456789abcdef"
    plant_round(redis_client, keys, dead, "m", finished)

    late = member("late")
    response = await get_past_a_planted_lease(late, url, keys, redis_client)
    assert orjson.loads(response.content)["hit"] == 1
    assert upstream.hits["/echo"] == 1
    assert (late.stats().redis_followed, late.stats().upstream_calls) == (1, 0)


async def test_nothing_secret_reaches_redis(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    secret = b"sk-live-0123456789"
    async with httpx.AsyncClient(
        transport=member("a"),
        headers={"authorization": f"Bearer {secret.decode()}"},
    ) as client:
        # The echo answers with hashes of the credential and the body, never with them.
        await client.post(f"{base_url}/echo", json={"prompt": secret.decode()})
    failing = GatedFailure(f"cannot reach https://api.example.com/v1/models?key={secret.decode()}")
    failing.release.set()
    async with httpx.AsyncClient(transport=member("b", transport=failing)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://upstream.invalid/models")

    streams = records(redis_client, prefix)
    assert len(streams) == 2
    stored = repr(streams).encode()
    assert secret not in stored
    assert b"https://api.example.com/v1/models?..." in stored
    # Key names hold only hashes and tokens.
    assert all(name.rsplit(":", 2)[-2].strip("{}").isalnum() for name in streams)
    assert hashlib.sha256(b"Bearer " + secret).hexdigest().encode() in stored  # the echo's own hash


def test_a_backend_serves_one_transport(redis_url: str, prefix: str) -> None:
    shared = backend(redis_url, prefix, "a")
    CoalescingTransport(backend=shared)
    with pytest.raises(ValueError, match="one per transport"):
        CoalescingTransport(backend=shared)
    shared.close()
