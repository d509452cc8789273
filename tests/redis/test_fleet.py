"""Fleet-wide coalescing across real processes sharing a real Redis.

Each worker process (tests/redis/worker.py) fires concurrent identical requests through
its own transport and Redis backend at the loopback server in this process, so the test
counts upstream calls. Requests overlap on conditions: the server holds its answer at a
gate until every process has joined (followers are seen blocked in Redis).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from ..conftest import until_sync
from ..support.redis_server import closed_port_url
from ..upstream import Upstream
from .conftest import StartRedis, Worker, blocked_readers

MakeWorker = Callable[[dict[str, Any]], Worker]

CALLERS = 25
#: Seconds to wait for conditions that need worker processes to start (a busy
#: machine may take a while to start four Pythons).
PATIENCE = 30.0
# Same headers from every library, so httpx and httpx2 processes share one key (their
# default Accept-Encoding differs when one of them can decode zstd).
HEADERS = {"user-agent": "fleet-test", "accept-encoding": "gzip"}


def config(
    base_url: str, redis_url: str, prefix: str, path: str = "/echo", method: str = "POST", **extra: Any
) -> dict[str, Any]:
    return {
        "redis": redis_url,
        "prefix": prefix,
        "client_name": f"{prefix}fleet",
        "url": base_url + path,
        "method": method,
        "json": {"q": "fleet"} if method == "POST" else None,
        "headers": HEADERS,
        "callers": CALLERS,
        **extra,
    }


def joined(workers: list[Worker]) -> bool:
    return all(worker.has("joined") for worker in workers)


def bodies(done: dict[str, Any]) -> list[str]:
    results = done["results"]
    assert len(results) == CALLERS
    assert all(result["error"] is None for result in results), results
    assert all(result["status"] == 200 for result in results)
    return [result["body"] for result in results]


def total(dones: list[dict[str, Any]], counter: str) -> int:
    return sum(int(done["stats"][counter]) for done in dones)


def test_hundred_callers_in_four_processes_make_one_upstream_call(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    fleet: MakeWorker,
) -> None:
    upstream.hold()
    # One fleet of every kind of client: asyncio, threads, trio, and httpx2.
    kinds: list[dict[str, Any]] = [
        {"mode": "asyncio"},
        {"mode": "sync"},
        {"mode": "trio"},
        {"mode": "asyncio", "library": "httpx2"},
    ]
    workers = [fleet(config(base_url, redis_url, prefix, **kind)) for kind in kinds]
    until_sync(lambda: joined(workers) and upstream.hits["/echo"] == 1, PATIENCE)
    until_sync(lambda: blocked_readers(redis_client, f"{prefix}fleet") == 3, PATIENCE)
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/echo"] == 1
    every_body = [body for done in dones for body in bodies(done)]
    assert len(every_body) == 4 * CALLERS
    assert len(set(every_body)) == 1
    assert orjson.loads(every_body[0])["hit"] == 1
    assert total(dones, "upstream_calls") == 1
    assert total(dones, "redis_led") == 1
    assert total(dones, "redis_followed") == 3
    assert total(dones, "redis_errors") == 0


def test_followers_in_other_processes_stream_events_live(
    upstream: Upstream, base_url: str, redis_url: str, prefix: str, fleet: MakeWorker
) -> None:
    upstream.hold()
    path = "/sse?events=4&hold=1"
    leader = fleet(config(base_url, redis_url, prefix, path, "GET"))
    until_sync(upstream.holding.is_set, PATIENCE)
    # Followers of every kind: threads, trio, httpx2.
    kinds: list[dict[str, Any]] = [
        {"mode": "sync"},
        {"mode": "trio"},
        {"mode": "asyncio", "library": "httpx2"},
    ]
    workers = [leader, *(fleet(config(base_url, redis_url, prefix, path, "GET", **kind)) for kind in kinds)]
    # Every caller in every process has the first event while the server still holds
    # the rest: the followers' bytes came live, through Redis, not after the end.
    until_sync(lambda: all(worker.has("first") for worker in workers), PATIENCE)
    assert upstream.holding.is_set()
    assert not upstream.gate.is_set()
    assert upstream.streams_closed == 0
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/sse"] == 1
    expected = "".join(f'data: {{"n":{n}}}\n\n' for n in range(4)) + "data: [DONE]\n\n"
    assert {body for done in dones for body in bodies(done)} == {expected}
    assert total(dones, "redis_followed") == 3


def test_killed_leader_is_replaced_by_exactly_one_follower(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    fleet: MakeWorker,
) -> None:
    lease = 1.0
    upstream.hold()
    leader = fleet(config(base_url, redis_url, prefix, lease=lease))
    until_sync(lambda: upstream.hits["/echo"] == 1, PATIENCE)
    followers = [fleet(config(base_url, redis_url, prefix, lease=lease)) for _ in range(3)]
    until_sync(lambda: joined(followers) and blocked_readers(redis_client, f"{prefix}fleet") == 3, PATIENCE)

    leader.kill()
    killed_at = time.monotonic()
    # One follower wins the expired lease and calls upstream; the others follow it.
    until_sync(lambda: upstream.hits["/echo"] == 2, PATIENCE)
    took_over = time.monotonic() - killed_at
    until_sync(lambda: blocked_readers(redis_client, f"{prefix}fleet") == 2, PATIENCE)
    upstream.gate.set()

    dones = [follower.done() for follower in followers]
    assert upstream.hits["/echo"] == 2, [done["stats"] for done in dones]
    # The lease runs out at most one lease after the last renewal; a follower notices
    # within one heartbeat (a third of the lease). The rest is slack for a busy machine.
    assert took_over < 3 * lease
    every_body = [body for done in dones for body in bodies(done)]
    assert {orjson.loads(body)["hit"] for body in every_body} == {2}
    assert total(dones, "redis_led") == 1
    assert total(dones, "upstream_calls") == 1


def test_every_request_succeeds_when_redis_dies_mid_flight(
    upstream: Upstream, base_url: str, redis_server: StartRedis, fleet: MakeWorker
) -> None:
    server = redis_server()
    client = redis.Redis.from_url(server.url)
    prefix = "mid-flight:"
    upstream.hold()
    leader = fleet(config(base_url, server.url, prefix))
    until_sync(lambda: upstream.hits["/echo"] == 1, PATIENCE)
    followers = [fleet(config(base_url, server.url, prefix)) for _ in range(3)]
    until_sync(lambda: joined(followers) and blocked_readers(client, f"{prefix}fleet") == 3, PATIENCE)
    client.close()

    server.kill()
    # Followers lose Redis before any byte arrived: each process sends its own call.
    until_sync(lambda: upstream.hits["/echo"] == 4, PATIENCE)
    upstream.gate.set()

    dones = [worker.done() for worker in [leader, *followers]]
    for done in dones:
        assert len(set(bodies(done))) == 1
    assert total(dones, "upstream_calls") == 4
    assert all(done["stats"]["redis_errors"] >= 1 for done in dones[1:])


def test_every_request_succeeds_when_redis_is_unreachable_from_the_start(
    upstream: Upstream, base_url: str, fleet: MakeWorker
) -> None:
    upstream.hold()
    workers = [fleet(config(base_url, closed_port_url(), "unreachable:")) for _ in range(2)]
    until_sync(lambda: joined(workers) and upstream.hits["/echo"] == 2, PATIENCE)
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    for done in dones:
        assert len(set(bodies(done))) == 1
        # Each process still coalesced its own callers into one call.
        assert done["stats"]["upstream_calls"] == 1
        assert done["stats"]["redis_errors"] == 1
    assert upstream.hits["/echo"] == 2


def test_processes_with_different_credentials_never_share(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    fleet: MakeWorker,
) -> None:
    upstream.hold()
    tenants = ["Bearer sk-tenant-a", "Bearer sk-tenant-b"]
    workers = [
        fleet(config(base_url, redis_url, prefix, headers={**HEADERS, "authorization": tenant}))
        for tenant in tenants * 2
    ]
    until_sync(lambda: joined(workers) and upstream.hits["/echo"] == 2, PATIENCE)
    until_sync(lambda: blocked_readers(redis_client, f"{prefix}fleet") == 2, PATIENCE)
    upstream.gate.set()

    dones = [worker.done() for worker in workers]
    assert upstream.hits["/echo"] == 2
    for tenant, done in zip(tenants * 2, dones, strict=True):
        auth_shas = {orjson.loads(body)["auth_sha"] for body in bodies(done)}
        assert auth_shas == {hashlib.sha256(tenant.encode()).hexdigest()}
    assert total(dones, "redis_led") == 2
    assert total(dones, "redis_followed") == 2
