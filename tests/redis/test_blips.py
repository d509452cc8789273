"""A Redis blip fails nobody: faults injected while one process leads and another follows.

Each test starts its own redis-server behind a ``FaultProxy`` (tests/redis/faults.py).
A leader transport sends the request upstream, which holds the response at a gate; a
follower transport in the same test (its own backend and connections, as another
process would have) follows the round through Redis. Mid-flight the test injects the
fault, heals it, then opens the gate. Pass condition for every fault, streamed (the
follower has already handed out bytes) and buffered: every caller gets the whole
response, none gets an error, and the upstream is called once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import redis

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

from ..conftest import until, until_sync
from ..support.redis_server import RedisServer
from ..upstream import Upstream
from .conftest import StartRedis, Worker, blocked_readers
from .faults import FaultProxy, restart
from .members import Outcome, lead_and_follow, streaming
from .test_fleet import PATIENCE, MakeWorker, bodies, joined, total
from .test_fleet import config as fleet_config

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

MakeTransport = Callable[..., CoalescingTransport]

#: A short lease keeps the tests short: a heartbeat of a third of a second.
LEASE = 1.0


@dataclass
class Rig:
    server: RedisServer
    proxy: FaultProxy
    start: StartRedis
    #: Looks at the clients before the fault, straight to Redis (not through the proxy);
    #: opened by the first look.
    watcher: redis.Redis | None = None

    def client(self) -> redis.Redis:
        """A client of the test's own, straight to Redis (not through the proxy)."""
        return redis.Redis.from_url(self.server.url, socket_timeout=5)

    def following(self, name: str) -> bool:
        """Whether the transport whose backend is *name* is blocked reading a leader's stream."""
        if self.watcher is None:
            self.watcher = self.client()
        return blocked_readers(self.watcher, name) == 1

    def leases(self) -> list[bytes]:
        client = self.client()
        try:
            values = [client.get(key) for key in client.scan_iter(match="*lease:*")]
            return [value for value in values if isinstance(value, bytes)]
        finally:
            client.close()


@pytest.fixture
def rig(redis_server: StartRedis) -> Iterator[Rig]:
    server = redis_server()
    proxy = FaultProxy(server.port)
    rig = Rig(server, proxy, redis_server)
    yield rig
    if rig.watcher is not None:
        rig.watcher.close()
    proxy.close()


def backend(rig: Rig, name: str) -> RedisBackend:
    return RedisBackend.from_url(rig.proxy.url, client_name=name, lease=LEASE)


async def restart_redis(rig: Rig) -> None:
    """SIGKILL and restart, empty: every lease and stream is lost."""
    rig.proxy.reset()
    rig.server = restart(rig.server, rig.start)


async def pause_redis(rig: Rig) -> None:
    """``CLIENT PAUSE`` for longer than the command timeouts and a heartbeat."""
    client = rig.client()
    try:
        client.client_pause(1500, all=True)
    finally:
        client.close()
    await anyio.sleep(1.6)


async def reset_connections(rig: Rig) -> None:
    rig.proxy.reset()


async def blackhole(rig: Rig) -> None:
    """A cut network for longer than the lease: the lease expires meanwhile."""
    rig.proxy.blackhole()
    await anyio.sleep(1.5 * LEASE)
    rig.proxy.heal()


async def evict(rig: Rig) -> None:
    """``maxmemory`` reached: Redis evicts keys with a TTL (all of ours) until the round's
    lease and stream are gone, then gets its memory back."""
    client = rig.client()
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "volatile-random")
        client.config_set("maxmemory", used + 256 * 1024)
        filler = b"x" * 1024
        index = 0
        while any(client.scan_iter(match="*lease:*")) or any(client.scan_iter(match="*stream:*")):
            pipe = client.pipeline(transaction=False)
            for _ in range(64):
                pipe.set(f"filler:{index}", filler, ex=60)
                index += 1
            pipe.execute()
        client.config_set("maxmemory", 0)
        client.delete(*[f"filler:{n}" for n in range(index)])
    finally:
        client.close()


FAULTS = {
    "restart": restart_redis,
    "client-pause": pause_redis,
    "connection-reset": reset_connections,
    "blackhole": blackhole,
    "eviction": evict,
}


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_streaming_follower_that_handed_out_bytes_resumes_after_a_redis_fault(
    fault: str, upstream: Upstream, base_url: str, rig: Rig, make_transport: MakeTransport
) -> None:
    leader = make_transport(backend=backend(rig, "leader"))
    follower = make_transport(backend=backend(rig, "follower"))
    upstream.hold()
    outcomes: dict[str, Outcome] = {}

    async def blip() -> None:
        [token] = rig.leases()
        await FAULTS[fault](rig)
        # The leader holds its lease again (taken back if Redis lost it), with its
        # own token: nobody else leads the key.
        await until(lambda: rig.leases() == [token], timeout=10)

    await lead_and_follow(
        leader,
        follower,
        base_url,
        streaming("/sse?events=3&hold=1", outcomes),
        arrived=upstream.holding.is_set,
        # The follower handed out the head and the first event, and waits for more.
        following=lambda: rig.following("follower"),
        release=upstream.gate.set,
        meanwhile=blip,
    )

    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert leader_body.endswith(b"data: [DONE]\n\n")
    assert outcomes["follower"] == (leader_body, None)
    assert upstream.hits["/sse"] == 1


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_buffered_follower_gets_the_leaders_answer_after_a_redis_fault(
    fault: str, upstream: Upstream, base_url: str, rig: Rig, make_transport: MakeTransport
) -> None:
    leader = make_transport(backend=backend(rig, "leader"))
    follower = make_transport(backend=backend(rig, "follower"))
    upstream.hold()
    bodies: dict[str, bytes] = {}

    async def call(name: str, client: httpx.AsyncClient) -> None:
        response = await client.post("/echo", json={"q": "blip"})
        assert response.status_code == 200
        bodies[name] = response.content

    await lead_and_follow(
        leader,
        follower,
        base_url,
        call,
        arrived=lambda: upstream.hits["/echo"] == 1,
        following=lambda: rig.following("follower"),
        release=upstream.gate.set,
        meanwhile=lambda: FAULTS[fault](rig),
    )

    assert bodies["follower"] == bodies["leader"]
    assert upstream.hits["/echo"] == 1


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("fault", ["restart", "blackhole"])
async def test_leader_that_finished_while_redis_was_away_publishes_the_rest_once_it_is_back(
    fault: str, upstream: Upstream, base_url: str, rig: Rig, make_transport: MakeTransport
) -> None:
    """The leader's own caller finishes during the fault; its follower, which already
    handed out the first event, gets the rest (and the end) once Redis answers."""
    leader = make_transport(backend=backend(rig, "leader"))
    follower = make_transport(backend=backend(rig, "follower"))
    upstream.hold()
    outcomes: dict[str, Outcome] = {}

    async def leader_finishes_during_the_fault() -> None:
        if fault == "restart":
            rig.server.kill()
            rig.proxy.reset()
        else:
            rig.proxy.blackhole()
        upstream.gate.set()
        await until(lambda: "leader" in outcomes)
        if fault == "restart":
            rig.server = rig.start(rig.server.port)
        else:
            rig.proxy.heal()

    await lead_and_follow(
        leader,
        follower,
        base_url,
        streaming("/sse?events=3&hold=1", outcomes),
        arrived=upstream.holding.is_set,
        following=lambda: rig.following("follower"),
        # Already open: the leader's caller finished while Redis was away.
        release=upstream.gate.set,
        meanwhile=leader_finishes_during_the_fault,
    )

    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert leader_body.endswith(b"data: [DONE]\n\n")
    assert outcomes["follower"] == (leader_body, None)
    assert upstream.hits["/sse"] == 1


def test_sync_streaming_follower_resumes_after_redis_restarts(
    upstream: Upstream, base_url: str, rig: Rig, make_transport: MakeTransport
) -> None:
    leader = make_transport(backend=backend(rig, "leader"))
    follower = make_transport(backend=backend(rig, "follower"))
    upstream.hold()
    outcomes: dict[str, Outcome] = {}

    def call(name: str, transport: CoalescingTransport) -> None:
        received = b""
        try:
            with (
                httpx.Client(transport=transport, base_url=base_url) as client,
                client.stream("GET", "/sse?events=3&hold=1") as response,
            ):
                for chunk in response.iter_raw():
                    received += chunk
            outcomes[name] = (received, None)
        except httpx.HTTPError as error:
            outcomes[name] = (received, f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=call, args=("leader", leader))]
    threads[0].start()
    until_sync(upstream.holding.is_set)
    threads.append(threading.Thread(target=call, args=("follower", follower)))
    threads[1].start()
    until_sync(lambda: rig.following("follower"))
    [token] = rig.leases()
    rig.proxy.reset()
    rig.server = restart(rig.server, rig.start)
    until_sync(lambda: rig.leases() == [token])
    upstream.gate.set()
    for thread in threads:
        thread.join(timeout=30)

    leader_body, leader_error = outcomes["leader"]
    assert leader_error is None
    assert outcomes["follower"] == (leader_body, None)
    assert upstream.hits["/sse"] == 1


# The Sentinel and Cluster failovers mid-flight: tests/redis/test_failover.py.


#: Worker processes of every kind (tests/redis/worker.py): asyncio, threads, trio, httpx2.
KINDS: list[dict[str, Any]] = [
    {"mode": "asyncio"},
    {"mode": "sync"},
    {"mode": "trio"},
    {"mode": "asyncio", "library": "httpx2"},
]


@pytest.mark.parametrize("answer", ["streamed", "buffered"])
@pytest.mark.parametrize("fault", ["restart", "blackhole"])
def test_a_fleet_of_processes_rides_out_a_redis_fault_with_one_upstream_call(
    fault: str, answer: str, upstream: Upstream, base_url: str, rig: Rig, fleet: MakeWorker
) -> None:
    """Four processes of every kind, 25 callers each; the fault once every follower
    process waits in Redis (streamed: every caller has its first event). Pass: every
    caller gets the whole answer, none an error, with one upstream call."""
    upstream.hold()
    streamed = answer == "streamed"
    path, method = ("/sse?events=3&hold=1", "GET") if streamed else ("/echo", "POST")

    def start(kind: dict[str, Any]) -> Worker:
        return fleet(fleet_config(base_url, rig.proxy.url, "blip:", path, method, lease=LEASE, **kind))

    leader = start(KINDS[0])
    until_sync(lambda: upstream.total == 1, PATIENCE)
    others = [start(kind) for kind in KINDS[1:]]
    workers = [leader, *others]
    watcher = rig.client()

    def ready() -> bool:
        waiting = all(w.has("first") for w in workers) if streamed else joined(workers)
        return waiting and blocked_readers(watcher, "blip:fleet") == len(others)

    until_sync(ready, PATIENCE)
    watcher.close()
    [token] = rig.leases()
    if fault == "restart":
        rig.proxy.reset()
        rig.server = restart(rig.server, rig.start)
        until_sync(lambda: rig.leases() == [token], PATIENCE)
    else:
        rig.proxy.blackhole()
        time.sleep(1.5 * LEASE)  # the fault itself: a cut network, longer than the lease
        rig.proxy.heal()
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert len({body for done in dones for body in bodies(done)}) == 1
    assert upstream.total == 1
    assert total(dones, "upstream_calls") == 1
