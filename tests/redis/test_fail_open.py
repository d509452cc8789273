"""Redis trouble never fails a request: it goes upstream from this process instead,
and Redis is left alone for the back-off period."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

from ..conftest import until
from ..support.redis_server import closed_port_url
from ..upstream import Upstream
from .conftest import StartRedis, blocked_readers
from .members import (
    Members,
    Outcome,
    finished_round,
    get_past_a_planted_lease,
    lead_and_follow,
    plant_round,
    streaming,
)

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class FakeRedis:
    """A TCP server that accepts connections and counts them, then either says nothing
    at all (a hung Redis) or answers every read with bytes that are not RESP."""

    def __init__(self, reply: bytes | None) -> None:
        self._reply = reply
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(connection)
            if self._reply is not None:
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            while connection.recv(65536):
                connection.sendall(self._reply or b"")
        except OSError:
            return

    def close(self) -> None:
        self._server.close()
        for connection in self._sockets:
            connection.close()


@pytest.fixture
def hung_redis() -> Iterator[FakeRedis]:
    fake = FakeRedis(reply=None)
    yield fake
    fake.close()


@pytest.fixture
def garbage_redis() -> Iterator[FakeRedis]:
    fake = FakeRedis(reply=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    yield fake
    fake.close()


async def test_unreachable_redis_sends_every_request_upstream(
    upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(backend=RedisBackend.from_url(closed_port_url()))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        for number in range(3):
            response = await client.get(f"/echo?n={number}")
            assert response.status_code == 200
    stats = transport.stats()
    assert stats.upstream_calls == 3
    # One failure, then two flights that skipped Redis during the back-off.
    assert stats.redis_errors == 3
    assert stats.redis_led == 0


def test_unreachable_redis_sends_sync_requests_upstream(
    upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(backend=RedisBackend.from_url(closed_port_url()))
    with httpx.Client(transport=transport, base_url=base_url) as client:
        assert client.get("/echo").status_code == 200
    assert (transport.stats().upstream_calls, transport.stats().redis_errors) == (1, 1)


@asyncio_only
async def test_hung_redis_times_out_once_then_is_left_alone_during_the_backoff(
    upstream: Upstream, base_url: str, hung_redis: FakeRedis, make_transport: MakeTransport
) -> None:
    transport = make_transport(backend=RedisBackend.from_url(hung_redis.url, socket_timeout=0.1, backoff=60))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        with anyio.fail_after(5):
            for number in range(5):
                assert (await client.get(f"/echo?n={number}")).status_code == 200
    assert hung_redis.connections == 1
    assert (transport.stats().upstream_calls, transport.stats().redis_errors) == (5, 5)


def test_hung_redis_times_out_for_sync_requests_too(
    upstream: Upstream, base_url: str, hung_redis: FakeRedis, make_transport: MakeTransport
) -> None:
    transport = make_transport(backend=RedisBackend.from_url(hung_redis.url, socket_timeout=0.1, backoff=60))
    with httpx.Client(transport=transport, base_url=base_url) as client:
        for number in range(3):
            assert client.get(f"/echo?n={number}").status_code == 200
    assert hung_redis.connections == 1
    assert transport.stats().upstream_calls == 3


async def test_redis_answering_garbage_fails_open(
    upstream: Upstream, base_url: str, garbage_redis: FakeRedis, make_transport: MakeTransport
) -> None:
    transport = make_transport(backend=RedisBackend.from_url(garbage_redis.url, backoff=60))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        for number in range(3):
            assert (await client.get(f"/echo?n={number}")).status_code == 200
    assert garbage_redis.connections == 1
    assert (transport.stats().upstream_calls, transport.stats().redis_errors) == (3, 3)


@asyncio_only
async def test_a_lease_no_leader_of_ours_wrote_fails_open(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    url = f"{base_url}/echo"
    keys, _ = await finished_round(member("a"), url, redis_client, prefix)
    redis_client.set(keys.lease, "not a token", px=60_000)
    transport = member("b")
    assert (await get_past_a_planted_lease(transport, url, keys, redis_client)).status_code == 200
    assert (transport.stats().upstream_calls, transport.stats().redis_errors) == (1, 1)


@asyncio_only
async def test_a_stream_no_leader_of_ours_wrote_fails_open(
    upstream: Upstream, base_url: str, prefix: str, redis_client: redis.Redis, member: Members
) -> None:
    url = f"{base_url}/echo"
    keys, _ = await finished_round(member("a"), url, redis_client, prefix)
    token = "fedcba9876543210"
    plant_round(redis_client, keys, token, "c", "a body without a head")
    transport = member("b")
    assert (await get_past_a_planted_lease(transport, url, keys, redis_client)).status_code == 200
    assert (transport.stats().upstream_calls, transport.stats().redis_errors) == (1, 1)


@asyncio_only
async def test_streaming_follower_gets_a_read_error_once_redis_stays_down_longer_than_a_stream_lives(
    upstream: Upstream, base_url: str, redis_server: StartRedis, make_transport: MakeTransport
) -> None:
    server = redis_server()
    redis_client = redis.Redis.from_url(server.url)
    # A follower that handed out bytes rides Redis trouble out for as long as the
    # round's stream would live (``stream_ttl``): a second here.
    options: dict[str, Any] = {"stream_ttl": 1.0}
    leader = make_transport(backend=RedisBackend.from_url(server.url, client_name="leader", **options))
    follower = make_transport(backend=RedisBackend.from_url(server.url, client_name="follower", **options))
    upstream.hold()
    outcomes: dict[str, Outcome] = {}

    async def redis_stays_down() -> None:
        redis_client.close()
        server.kill()
        await until(lambda: "follower" in outcomes, timeout=20)

    await lead_and_follow(
        leader,
        follower,
        base_url,
        streaming("/sse?events=3&hold=1", outcomes, httpx.ReadError),
        arrived=upstream.holding.is_set,
        # The follower handed out the head and the first event, then waits for more.
        following=lambda: blocked_readers(redis_client, "follower") == 1,
        release=upstream.gate.set,
        meanwhile=redis_stays_down,
    )

    follower_body, follower_error = outcomes["follower"]
    assert follower_body == b'data: {"n":0}\n\n'
    assert follower_error is not None
    assert follower_error.startswith("ReadError: lost the shared response: Redis failed")
    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert leader_body.endswith(b"data: [DONE]\n\n")
    assert follower.stats().redis_errors == 1


@asyncio_only
async def test_redis_is_used_again_after_the_backoff_once_it_is_back(
    upstream: Upstream, base_url: str, redis_server: StartRedis, make_transport: MakeTransport
) -> None:
    server = redis_server()
    port = server.port
    transport = make_transport(backend=RedisBackend.from_url(server.url, backoff=0.2))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        await client.get("/echo?n=1")
        assert transport.stats().redis_led == 1
        server.kill()
        await client.get("/echo?n=2")
        assert transport.stats().redis_errors == 1
        redis_server(port)
        # The back-off is a time, so this test waits for it.
        await anyio.sleep(0.25)
        await client.get("/echo?n=3")
    stats = transport.stats()
    assert (stats.redis_led, stats.redis_errors, stats.upstream_calls) == (2, 1, 3)
