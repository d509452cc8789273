"""A failover mid-flight fails nobody: Redis Cluster and Sentinel, streamed and buffered.

A leader transport sends the request upstream, which holds its answer at a gate (a
streamed answer after its first event); then a follower transport (its own backend
and connections, as another process would have) and a worker process of sync callers
join and follow the round through Redis. Once every follower waits (streamed: has
handed out the first event), the test SIGKILLs the master that serves the round (a
Cluster master owning the key's slot, or Sentinel's master), waits until its replica
is promoted and serves, then opens the gate.

Pass condition, both topologies and both kinds of answer: every caller gets the whole
body, byte for byte, none gets an error (0 ``ReadError`` while the leader lives), and
the upstream is called at most twice (at most one extra call for the key; one is the
ideal, and what the fault table measures).

The backends are built the documented way: ``RedisBackend.from_url(url, cluster=True)``,
``RedisBackend.from_sentinel(...)`` and ``redis+sentinel://`` URLs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
import redis

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

from ..conftest import until, until_in_thread
from ..upstream import Upstream
from .conftest import Worker
from .servers import Cluster, Node, Sentinel
from .test_fleet import CALLERS, HEADERS, bodies, config

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

MakeTransport = Callable[..., CoalescingTransport]
MakeWorker = Callable[[dict[str, Any]], Worker]

#: A short lease (a heartbeat of a third of it), so that it may run out during the
#: failover (about 2 s with a 1 s node timeout) and the leader must take it back on
#: the promoted replica; still longer than half the failover, since a follower that
#: handed out nothing waits out Redis trouble for two leases before it calls alone.
LEASE = 2.0
#: Redis commands may take this long before a flight falls back upstream: the default
#: quarter second, on a machine busy with the whole suite, can send a follower upstream
#: before the fault is even injected (failing open, as it should, but not the case here).
TIMEOUTS: dict[str, Any] = {"lease": LEASE, "socket_timeout": 1.0}
#: Callers per transport in this process.
LOCAL_CALLERS = 3
PREFIX = "failover:"
STREAMED = ("GET", "/sse?events=3&hold=1")
BUFFERED = ("POST", "/echo")
EXPECTED_SSE = "".join(f'data: {{"n":{n}}}\n\n' for n in range(3)) + "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One cluster for the module: each test kills a master; afterwards the killed node
    is started again (it rejoins as a replica) and the cluster settles, whole."""
    with Cluster.start(node_timeout_ms=1000) as started:
        yield started


@pytest.fixture
def healed(cluster: Cluster) -> Iterator[Cluster]:
    yield cluster
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            node.start()
    cluster.wait_whole()
    with cluster.client() as client:
        keys = list(client.scan_iter(match=f"{PREFIX}*", target_nodes=client.PRIMARIES))
        for key in keys:
            client.delete(key)


def connections(nodes: list[Node], prefix: str) -> str:
    """The connections named *prefix*... on each live node: name, flags, command (what a
    failure message shows of the followers' reads)."""
    lines = []
    for node in nodes:
        if node.process is None or node.process.poll() is not None:
            lines.append(f"  {node.port}: down")
            continue
        try:
            with node.client() as client:
                role = client.info("replication").get("role")
                entries = client.client_list()
        except redis.RedisError as error:
            lines.append(f"  {node.port}: {type(error).__name__}: {error}")
            continue
        named = [
            f"{entry.get('name')}[{entry.get('flags')} {entry.get('cmd')} age={entry.get('age')}]"
            for entry in entries
            if entry.get("name", "").startswith(prefix)
        ]
        lines.append(f"  {node.port} ({role}): {', '.join(named) or '-'}")
    return "\n".join(lines)


def blocked_on(nodes: list[Node], name: str) -> int:
    """Connections named *name* blocked in a read on any live node of *nodes*."""
    count = 0
    for node in nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        with node.client() as client:
            entries = client.client_list()
        count += sum(1 for entry in entries if entry.get("name") == name and "b" in entry.get("flags", ""))
    return count


class Callers:
    """Callers of one client (one transport): what each got, and how many have a first
    chunk. The client stays open for all of them, as a service's would: closing it
    closes the backend, and a leader's backend may still owe its followers records."""

    def __init__(self, client: httpx.AsyncClient, method: str, path: str) -> None:
        self._client = client
        self._method = method
        self._path = path
        self.started = 0
        self.outcomes: list[tuple[int, bytes, str | None]] = []

    async def call(self) -> None:
        status, received = 0, b""
        json = {"q": "fleet"} if self._method == "POST" else None
        try:
            async with self._client.stream(self._method, self._path, json=json) as response:
                status = response.status_code
                async for chunk in response.aiter_raw():
                    if not received:
                        self.started += 1
                    received += chunk
            self.outcomes.append((status, received, None))
        except httpx.HTTPError as error:
            self.outcomes.append((status, received, f"{type(error).__name__}: {error}"))


async def ride_out_a_failover(
    answer: str,
    upstream: Upstream,
    base_url: str,
    backends: list[RedisBackend],
    worker: dict[str, Any],
    nodes: Callable[[], list[Node]],
    fail_over: Callable[[], None],
    make_transport: MakeTransport,
    fleet: MakeWorker,
) -> None:
    """The scenario of the module docstring; *fail_over* kills the master that serves
    the round and returns once the promoted replica serves it (run in a thread)."""
    method, path = STREAMED if answer == "streamed" else BUFFERED
    streamed = answer == "streamed"
    upstream.hold()
    transports = [make_transport(backend=backend) for backend in backends]
    clients = [
        httpx.AsyncClient(transport=transport, base_url=base_url, headers=HEADERS, timeout=30.0)
        for transport in transports
    ]
    leader, follower = (Callers(client, method, path) for client in clients)
    follower_name = f"{PREFIX}follower"
    others: Worker | None = None

    def seen() -> str:
        stats = [transport.stats() for transport in transports]
        worker = (
            "not started"
            if others is None
            else f"events {sorted(others.events)}, exit {others.process.poll()}"
        )
        return "\n".join(
            [
                f"{upstream.total} upstream call(s); worker {worker};"
                f" follower callers started {follower.started}",
                *(
                    f"{name}: in_flight {s.in_flight}, waiters {s.waiters}, led {s.redis_led},"
                    f" followed {s.redis_followed}, redis errors {s.redis_errors}"
                    for name, s in zip(("leader", "follower"), stats, strict=True)
                ),
                f"blocked: {follower_name} {blocked_on(nodes(), follower_name)},"
                f" {PREFIX}fleet {blocked_on(nodes(), f'{PREFIX}fleet')}",
                "connections:",
                connections(nodes(), PREFIX),
            ]
        )

    def holding() -> bool:
        # The round is the leader transport's: it holds the lease (the other members
        # only start now, so none of them can win the election first).
        held = upstream.holding.is_set() if streamed else upstream.total == 1
        return held and transports[0].stats().redis_led == 1

    async with clients[0], clients[1], anyio.create_task_group() as group:
        for _ in range(LOCAL_CALLERS):
            group.start_soon(leader.call)
        await until(holding, timeout=30, describe=seen)
        # Started with the leader's callers, the worker process won the election now and
        # then on a busy machine (its sync client is ready as soon as the process is,
        # while the leader's asyncio cluster client still looks at the cluster): it led
        # the round, the leader transport followed it, and no fleet reader ever blocked.
        others = fleet({**config(base_url, "", PREFIX, path, method), **worker, "mode": "sync"})
        for _ in range(LOCAL_CALLERS):
            group.start_soon(follower.call)

        def waiting() -> bool:
            assert others is not None
            ready = others.has("first") if streamed else others.has("joined")
            if streamed:
                ready = ready and follower.started == LOCAL_CALLERS
            return (
                ready
                and blocked_on(nodes(), follower_name) == 1
                and blocked_on(nodes(), f"{PREFIX}fleet") == 1
            )

        try:
            # In a thread, every 20 ms: CLIENT LIST on every node every millisecond in the
            # event loop would starve the transports that run in it.
            await until_in_thread(waiting, timeout=30, describe=seen)
        except TimeoutError as error:
            others.kill()
            raise AssertionError(f"{error}\nworker stderr:\n{others.stderr_now()[-20000:]}") from None
        await anyio.to_thread.run_sync(fail_over)
        upstream.gate.set()
    assert others is not None
    done = others.done()

    expected = EXPECTED_SSE.encode() if streamed else None
    local = leader.outcomes + follower.outcomes
    errors = [error for _, _, error in local]
    assert errors == [None] * (2 * LOCAL_CALLERS), errors
    assert {status for status, _, _ in local} == {200}
    got = {body for _, body, _ in local} | {body.encode() for body in bodies(done)}
    if expected is not None:
        assert got == {expected}
    else:
        # The echo counts its calls in "hit": an extra call answers with another count.
        assert len({re.sub(rb'"hit":\d+', b"", body) for body in got}) == 1, got
        assert len(got) <= upstream.total
    assert len(done["results"]) == CALLERS
    assert upstream.total <= 2, f"{upstream.total} upstream calls for one key"
    # Reported by the fault table; one is the ideal.
    print(f"{answer}: {upstream.total} upstream call(s)")


# -- Redis Cluster: the master of the key's slot -------------------------------------------


@pytest.mark.parametrize("answer", ["streamed", "buffered"])
async def test_a_cluster_master_failover_mid_flight_fails_no_caller(
    answer: str,
    upstream: Upstream,
    base_url: str,
    healed: Cluster,
    make_transport: MakeTransport,
    fleet: MakeWorker,
) -> None:
    cluster = healed
    backends = [
        RedisBackend.from_url(
            cluster.url, cluster=True, prefix=PREFIX, client_name=f"{PREFIX}{name}", **TIMEOUTS
        )
        for name in ("leader", "follower")
    ]

    def fail_over() -> None:
        with cluster.client() as client:
            [lease] = client.scan_iter(match=f"{PREFIX}lease:*", target_nodes=client.PRIMARIES)
        promoted = cluster.kill_master_of(lease.decode())
        assert cluster.master_of(lease.decode()) is promoted

    await ride_out_a_failover(
        answer,
        upstream,
        base_url,
        backends,
        {"redis": cluster.url, "cluster": True, **TIMEOUTS},
        lambda: cluster.nodes,
        fail_over,
        make_transport,
        fleet,
    )


# -- Sentinel: its one master ----------------------------------------------------------------


@pytest.mark.parametrize("answer", ["streamed", "buffered"])
async def test_a_sentinel_failover_mid_flight_fails_no_caller(
    answer: str, upstream: Upstream, base_url: str, make_transport: MakeTransport, fleet: MakeWorker
) -> None:
    with Sentinel.start() as setup:
        addresses = ",".join(f"{host}:{port}" for host, port in setup.addresses)
        url = f"redis+sentinel://{addresses}/{setup.service}/0"
        backends = [
            RedisBackend.from_sentinel(
                setup.addresses, setup.service, prefix=PREFIX, client_name=f"{PREFIX}leader", **TIMEOUTS
            ),
            RedisBackend.from_url(url, prefix=PREFIX, client_name=f"{PREFIX}follower", **TIMEOUTS),
        ]

        def fail_over() -> None:
            setup.master.kill()
            setup.wait_failed_over()

        await ride_out_a_failover(
            answer,
            upstream,
            base_url,
            backends,
            {"redis": url, **TIMEOUTS},
            lambda: [setup.master, setup.replica],
            fail_over,
            make_transport,
            fleet,
        )
