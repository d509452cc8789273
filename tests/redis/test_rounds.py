"""A round lives as long as its leader publishes it, whoever holds the key's lease now.

The lease only elects: it says which round a newcomer follows. Whether a round's leader
is still there is the round's own heartbeat, so a follower of a round whose lease passed
to another process during a blip keeps reading the round it started with.

The test starts its own redis-server. The old leader and its follower reach it through a
``FaultProxy``; a third transport (another process, as far as Redis can tell) reaches it
directly. The proxy blackholes the first two for longer than the lease, so the lease
lapses in Redis, and the third takes it with a request of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
import redis

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

from ..conftest import until
from ..support.redis_server import RedisServer
from ..upstream import Upstream
from .conftest import StartRedis, blocked_readers
from .faults import FaultProxy
from .members import Outcome, read_stream

MakeTransport = Callable[..., CoalescingTransport]

#: A short lease keeps the test short: a heartbeat of a third of a second.
LEASE = 1.0

PATH = "/sse?events=3&hold=1"


@pytest.fixture
def server(redis_server: StartRedis) -> RedisServer:
    return redis_server()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(server.port)
    yield proxy
    proxy.close()


def lease_values(server: RedisServer) -> list[bytes]:
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        values = [client.get(key) for key in client.scan_iter(match="*lease:*")]
        return [value for value in values if isinstance(value, bytes)]
    finally:
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_followers_of_a_leader_whose_lease_another_process_took_during_a_blip_get_the_whole_body(
    upstream: Upstream, base_url: str, server: RedisServer, proxy: FaultProxy, make_transport: MakeTransport
) -> None:
    """Pass: the old leader's follower, which handed out the head and the first event
    before the blip, ends with the old leader's whole body, byte for byte, and no error;
    the new leader's caller gets a whole body too; the upstream is called at most twice
    (once per round)."""
    leader = make_transport(backend=RedisBackend.from_url(proxy.url, client_name="leader", lease=LEASE))
    follower = make_transport(backend=RedisBackend.from_url(proxy.url, client_name="follower", lease=LEASE))
    newcomer = make_transport(backend=RedisBackend.from_url(server.url, client_name="newcomer", lease=LEASE))
    upstream.hold()
    outcomes: dict[str, Outcome] = {}
    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
        httpx.AsyncClient(transport=newcomer, base_url=base_url) as third,
    ):

        async def call(name: str, client: httpx.AsyncClient) -> None:
            outcomes[name] = await read_stream(client, PATH)

        async with anyio.create_task_group() as group:
            group.start_soon(call, "leader", first)
            await until(upstream.holding.is_set)
            group.start_soon(call, "follower", second)
            # The follower handed out the head and the first event, and waits for more.
            watcher = redis.Redis.from_url(server.url, socket_timeout=5)
            await until(lambda: blocked_readers(watcher, "follower") == 1)
            watcher.close()
            [old_token] = lease_values(server)
            proxy.blackhole()
            # The old leader cannot renew: its lease lapses in Redis, and the newcomer,
            # which Redis still hears, leads a round of its own.
            await until(lambda: lease_values(server) != [old_token], timeout=10)
            group.start_soon(call, "newcomer", third)
            await until(lambda: upstream.hits["/sse"] == 2)
            [new_token] = lease_values(server)
            assert new_token != old_token
            proxy.heal()
            upstream.gate.set()

    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert leader_body.endswith(b"data: [DONE]\n\n")
    assert outcomes["follower"] == (leader_body, None)
    newcomer_body, newcomer_error = outcomes["newcomer"]
    assert newcomer_error is None
    assert newcomer_body.endswith(b"data: [DONE]\n\n")
    assert upstream.hits["/sse"] <= 2
