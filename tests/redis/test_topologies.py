"""The backend on Redis Cluster, Sentinel and Valkey: real servers (tests/redis/servers.py),
real worker processes, and what is refused at construction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import redis
import redis.cluster
import valkey

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

from ..conftest import until, until_sync
from ..support.redis_server import closed_port_url
from ..upstream import Upstream
from .conftest import Worker
from .servers import Cluster, Node, Sentinel
from .test_fleet import HEADERS, PATIENCE, bodies, config, joined, total

MakeTransport = Callable[..., CoalescingTransport]
MakeWorker = Callable[[dict[str, Any]], Worker]


def blocked_on(nodes: list[Node], name: str) -> int:
    """Connections named *name* blocked in a read on any of *nodes* (followers waiting)."""
    count = 0
    for node in nodes:
        with node.client() as client:
            entries = client.client_list()
        count += sum(1 for entry in entries if entry.get("name") == name and "b" in entry.get("flags", ""))
    return count


# -- Redis Cluster, across processes -----------------------------------------------------


@pytest.mark.parametrize("mode", ["asyncio", "sync", "trio"])
def test_a_fleet_on_redis_cluster_makes_one_upstream_call_for_a_buffered_answer(
    mode: str, upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str, fleet: MakeWorker
) -> None:
    upstream.hold()
    kinds: list[dict[str, Any]] = [{"mode": "asyncio"}, {"mode": mode}, {"mode": "sync"}]
    workers = [fleet(config(base_url, redis_cluster.url, prefix, cluster=True, **kind)) for kind in kinds]
    until_sync(lambda: joined(workers) and upstream.hits["/echo"] == 1, PATIENCE)
    until_sync(lambda: blocked_on(redis_cluster.nodes, f"{prefix}fleet") == 2, PATIENCE)
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/echo"] == 1
    assert len({body for done in dones for body in bodies(done)}) == 1
    assert (total(dones, "redis_led"), total(dones, "redis_followed")) == (1, 2)
    assert total(dones, "redis_errors") == 0


def test_a_fleet_on_redis_cluster_streams_events_live_to_other_processes(
    upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str, fleet: MakeWorker
) -> None:
    upstream.hold()
    path = "/sse?events=4&hold=1"
    leader = fleet(config(base_url, redis_cluster.url, prefix, path, "GET", cluster=True))
    until_sync(upstream.holding.is_set, PATIENCE)
    kinds: list[dict[str, Any]] = [{"mode": "sync"}, {"mode": "trio"}]
    workers = [
        leader,
        *(
            fleet(config(base_url, redis_cluster.url, prefix, path, "GET", cluster=True, **kind))
            for kind in kinds
        ),
    ]
    until_sync(lambda: all(worker.has("first") for worker in workers), PATIENCE)
    assert not upstream.gate.is_set()
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/sse"] == 1
    expected = "".join(f'data: {{"n":{n}}}\n\n' for n in range(4)) + "data: [DONE]\n\n"
    assert {body for done in dones for body in bodies(done)} == {expected}
    assert total(dones, "redis_followed") == 2
    assert total(dones, "redis_errors") == 0


def test_a_cluster_answer_longer_than_the_lease_keeps_its_lease_and_its_followers(
    upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str, fleet: MakeWorker
) -> None:
    # Pass: the lease (0.6 s) is renewed on the cluster for an answer held three times as
    # long; followers in other processes get it whole: one upstream call, no ReadError.
    lease = 0.6
    upstream.hold()
    path = "/sse?events=3&hold=1"
    workers = [
        fleet(config(base_url, redis_cluster.url, prefix, path, "GET", cluster=True, lease=lease, mode=mode))
        for mode in ("asyncio", "sync", "trio")
    ]
    until_sync(lambda: all(worker.has("first") for worker in workers), PATIENCE)
    # Time itself is the condition here: the answer must outlast several leases.
    time.sleep(3 * lease)
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/sse"] == 1, [done["stats"] for done in dones]
    errors = [result["error"] for done in dones for result in done["results"] if result["error"]]
    assert not errors, errors
    assert total(dones, "redis_led") == 1
    assert total(dones, "redis_errors") == 0


# -- clients and URLs, in one process ------------------------------------------------------


async def two_transports_share_one_call(
    make_transport: MakeTransport,
    upstream: Upstream,
    base_url: str,
    backends: list[RedisBackend],
    nodes: list[Node],
    follower_name: str,
) -> tuple[CoalescingTransport, CoalescingTransport]:
    """A leader's transport and a follower's (its clients named *follower_name*), each
    with its backend: one upstream call."""
    leader = make_transport(backend=backends[0])
    follower = make_transport(backend=backends[1])
    upstream.hold()
    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(first.post, "/echo")
            await until(lambda: upstream.hits["/echo"] == 1)
            group.start_soon(second.post, "/echo")
            # The follower has read the leader's lease and waits on its stream.
            await until(lambda: blocked_on(nodes, follower_name) == 1)
            upstream.gate.set()
    assert upstream.hits["/echo"] == 1
    assert (leader.stats().redis_led, follower.stats().redis_followed) == (1, 1)
    assert leader.stats().redis_errors == follower.stats().redis_errors == 0
    return leader, follower


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_from_url_with_cluster_true_coalesces_across_backends(
    make_transport: MakeTransport, upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str
) -> None:
    backends = [
        RedisBackend.from_url(redis_cluster.url, cluster=True, prefix=prefix, client_name=f"{prefix}{n}")
        for n in range(2)
    ]
    await two_transports_share_one_call(
        make_transport, upstream, base_url, backends, redis_cluster.nodes, f"{prefix}1"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_redis_cluster_client_given_to_the_backend_coalesces(
    make_transport: MakeTransport, upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str
) -> None:
    clients = [
        redis.cluster.RedisCluster(
            host="127.0.0.1", port=redis_cluster.nodes[0].port, socket_timeout=5.0, client_name=f"{prefix}{n}"
        )
        for n in range(2)
    ]
    try:
        backends = [RedisBackend(client, prefix=prefix) for client in clients]
        await two_transports_share_one_call(
            make_transport, upstream, base_url, backends, redis_cluster.nodes, f"{prefix}1"
        )
    finally:
        for client in clients:
            client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("scheme", ["valkey", "redis"])
async def test_valkey_urls_coalesce_on_a_valkey_server(
    scheme: str,
    make_transport: MakeTransport,
    upstream: Upstream,
    base_url: str,
    valkey_server: Node,
    prefix: str,
) -> None:
    url = f"{scheme}://127.0.0.1:{valkey_server.port}/0"
    backends = [RedisBackend.from_url(url, prefix=prefix, client_name=f"{prefix}{n}") for n in range(2)]
    await two_transports_share_one_call(
        make_transport, upstream, base_url, backends, [valkey_server], f"{prefix}1"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sentinel_backends_coalesce_on_the_master_they_name(
    make_transport: MakeTransport, upstream: Upstream, base_url: str, redis_sentinel: Sentinel, prefix: str
) -> None:
    addresses = ",".join(f"{host}:{port}" for host, port in redis_sentinel.addresses)
    backends = [
        RedisBackend.from_sentinel(redis_sentinel.addresses, redis_sentinel.service, prefix=prefix),
        RedisBackend.from_url(
            f"redis+sentinel://{addresses}/{redis_sentinel.service}/0",
            prefix=prefix,
            client_name=f"{prefix}1",
        ),
    ]
    await two_transports_share_one_call(
        make_transport, upstream, base_url, backends, [redis_sentinel.current_master()], f"{prefix}1"
    )


def sync_transports_share_one_call(
    upstream: Upstream, base_url: str, backends: list[RedisBackend], nodes: list[Node], follower_name: str
) -> None:
    """The thread side (sync clients, the lease keeper, the reader thread): a leader's
    transport and a follower's (its clients named *follower_name*), one upstream call."""
    transports = [CoalescingTransport(backend=backend) for backend in backends]
    upstream.hold()
    results: list[int] = []

    def call(transport: CoalescingTransport) -> None:
        with httpx.Client(transport=transport, base_url=base_url) as client:
            results.append(client.post("/echo").status_code)

    first = threading.Thread(target=call, args=(transports[0],))
    first.start()
    until_sync(lambda: upstream.hits["/echo"] == 1)
    second = threading.Thread(target=call, args=(transports[1],))
    second.start()
    until_sync(lambda: blocked_on(nodes, follower_name) == 1)
    upstream.gate.set()
    first.join()
    second.join()
    assert results == [200, 200]
    assert upstream.hits["/echo"] == 1
    assert transports[1].stats().redis_followed == 1
    for transport in transports:
        transport.close()


def test_sync_callers_coalesce_on_a_cluster(
    upstream: Upstream, base_url: str, redis_cluster: Cluster, prefix: str
) -> None:
    backends = [
        RedisBackend.from_url(redis_cluster.url, cluster=True, prefix=prefix, client_name=f"{prefix}{n}")
        for n in range(2)
    ]
    sync_transports_share_one_call(upstream, base_url, backends, redis_cluster.nodes, f"{prefix}1")


def test_valkeys_own_python_client_fits_the_backend(
    upstream: Upstream, base_url: str, valkey_server: Node, prefix: str
) -> None:
    # valkey-py is a fork of redis-py: same methods, other classes (typed for redis-py).
    clients = [
        valkey.Valkey(port=valkey_server.port, socket_timeout=1.0, client_name=f"{prefix}{n}")
        for n in range(2)
    ]
    backends = [RedisBackend(client, prefix=prefix) for client in clients]  # type: ignore[arg-type]
    try:
        sync_transports_share_one_call(upstream, base_url, backends, [valkey_server], f"{prefix}1")
    finally:
        for client in clients:
            client.close()  # type: ignore[no-untyped-call]


# -- what is refused at construction, and what fails open ----------------------------------


@pytest.mark.parametrize("prefix", ["app{1}:", "a}b", "{"])
def test_a_prefix_with_a_brace_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisBackend.from_url("redis://127.0.0.1:6379/0", prefix=prefix)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"socket_timout": 1.0}, TypeError),
        ({"require_full_coverage": False}, TypeError),  # a cluster option, without cluster=True
        ({"decode_responses": True}, ValueError),
        ({"read_from_replicas": True, "cluster": True}, ValueError),
        ({"host": "elsewhere"}, ValueError),
    ],
)
def test_options_that_cannot_work_are_refused_at_construction(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        RedisBackend.from_url("redis://127.0.0.1:6379/0", **options)


def test_cluster_options_are_taken_with_cluster_true() -> None:
    RedisBackend.from_url("redis://127.0.0.1:7000", cluster=True, require_full_coverage=False).close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1/service",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/service/db0",
        "redis+sentinel://user:secret@127.0.0.1:26379/service",
        "nosuch://127.0.0.1:6379",
    ],
)
def test_malformed_urls_are_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match=r"sentinel|URL|scheme"):
        RedisBackend.from_url(url)


def test_a_client_that_decodes_responses_is_refused() -> None:
    client = redis.cluster.RedisCluster.__new__(redis.cluster.RedisCluster)
    with pytest.raises((ValueError, TypeError, AttributeError)):
        RedisBackend(client)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(redis.Redis(decode_responses=True))


@pytest.mark.anyio
async def test_an_unreachable_cluster_fails_open_without_an_exception(
    make_transport: MakeTransport, upstream: Upstream, base_url: str
) -> None:
    # Pass: building the backend raises nothing, and the request goes upstream alone.
    transport = make_transport(backend=RedisBackend.from_url(closed_port_url(), cluster=True))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        response = await client.post("/echo")
    assert response.status_code == 200
    assert transport.stats().redis_errors >= 1
    assert transport.stats().upstream_calls == 1


def test_an_unreachable_sentinel_fails_open_for_sync_callers(upstream: Upstream, base_url: str) -> None:
    port = int(closed_port_url().rsplit(":", 1)[1].split("/")[0])
    transport = CoalescingTransport(backend=RedisBackend.from_sentinel([("127.0.0.1", port)], "nowhere"))
    with httpx.Client(transport=transport, base_url=base_url, headers=HEADERS) as client:
        assert client.post("/echo").status_code == 200
    assert transport.stats().redis_errors >= 1
    transport.close()
