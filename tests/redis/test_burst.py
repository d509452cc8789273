"""Bursts across processes do not become connection storms (the CI-sized rows of
benchmarks/fleet_burst.py; the full 8 x 500 x 10 and 8 x 2,000 x 1 run there).

Each row: worker processes fire all their requests at once, distinct keys, several
callers per key, against an upstream that answers after a second, through a private
redis-server (its statistics are the test's own). Pass: one upstream call per key (a
process that lags past the answer may lead one more round: at most 1 % extra), no flight
fails open, no request fails, no connection is refused, and connections stay bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest
import redis

from benchmarks.fleet_burst import EVENTS, run_burst
from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend
from httpx_coalesce.redis._ops import PIPELINES, AsyncioOps

from ..conftest import until
from ..upstream import Upstream
from .conftest import StartRedis

MakeTransport = Callable[..., CoalescingTransport]

PROCESSES = 4
KEYS = 100
CALLERS = 5


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_a_burst_of_distinct_keys_makes_one_call_per_key_with_bounded_connections(
    streamed: bool, redis_server: StartRedis
) -> None:
    server = redis_server()
    # Warm processes (connected before the burst) and 1 s Redis timeouts: on a shared
    # 2-core machine a burst can starve an event loop past the 0.25 s defaults, which is
    # the machine, not Redis. benchmarks/fleet_burst.py measures cold, with the defaults.
    row = run_burst(
        server.url, processes=PROCESSES, keys=KEYS, callers=CALLERS, streamed=streamed, warm=True, timeout=1.0
    )
    assert (row["failed"], row["fail_open"], row["refused"]) == (0, 0, 0), row
    assert KEYS <= row["upstream_calls"] <= KEYS * 1.01, row
    # Per process: its event loop's pipelines, one blocked reader and the lease keeper's
    # connection (its only thread): far below one per flight, and none opened twice.
    assert row["connections_opened"] <= PROCESSES * (PIPELINES + 2), row
    # Round trips: about one per process for a buffered flight (elections batched), and
    # one per record more for a streamed one.
    assert row["round_trips_per_flight"] < PROCESSES * (2 + (EVENTS + 2 if streamed else 0)), row


# -- one process, in this test: the connections it opens and what fails open ----------

KEYS_IN_PROCESS = 60
CALLERS_IN_PROCESS = 3


def _named(client: redis.Redis, name: str) -> int:
    return sum(1 for entry in client.client_list() if entry.get("name") == name)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_burst_of_distinct_keys_in_one_process_fails_nothing_open_on_a_few_connections(
    upstream: Upstream, base_url: str, redis_server: StartRedis, make_transport: MakeTransport
) -> None:
    """Two fleet members on one event loop: the first leads 60 distinct keys (held
    upstream), then the second's 3 callers per key follow them. Pass: one upstream call
    per key, no Redis error in either (nothing fails open), and each member's
    connections, while every flight waits and in all, stay within the stated bound:
    PIPELINES for its loop's commands, one blocked reader, one for the lease keeper's
    thread, however many flights."""
    server = redis_server()
    observer = redis.Redis.from_url(server.url)
    opened_before = int(observer.info("stats")["total_connections_received"])

    backends = {
        name: RedisBackend.from_url(server.url, prefix="burst:", client_name=f"burst-{name}")
        for name in ("leader", "follower")
    }
    leader = make_transport(backend=backends["leader"])
    follower = make_transport(backend=backends["follower"])
    upstream.hold()
    answers: dict[str, list[bytes]] = {}

    async def call(client: httpx.AsyncClient, key: int) -> None:
        response = await client.post("/echo", json={"key": key})
        assert response.status_code == 200
        answers.setdefault(str(key), []).append(response.content)

    def following() -> int:
        # The follower's callers of each key share one flight, which waits in its reader.
        ops = backends["follower"]._clients.async_ops()
        assert isinstance(ops, AsyncioOps)
        return ops.following()

    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
        anyio.create_task_group() as group,
    ):
        for key in range(KEYS_IN_PROCESS):
            group.start_soon(call, first, key)
        await until(lambda: upstream.hits["/echo"] == KEYS_IN_PROCESS)
        for key in range(KEYS_IN_PROCESS):
            for _ in range(CALLERS_IN_PROCESS):
                group.start_soon(call, second, key)
        await until(lambda: following() == KEYS_IN_PROCESS)
        during = {name: _named(observer, f"burst-{name}") for name in ("leader", "follower")}
        upstream.gate.set()

    assert upstream.hits["/echo"] == KEYS_IN_PROCESS
    assert all(len(set(bodies)) == 1 and len(bodies) == 1 + CALLERS_IN_PROCESS for bodies in answers.values())
    led, followed = leader.stats(), follower.stats()
    assert (led.redis_errors, followed.redis_errors) == (0, 0)
    assert (led.redis_led, followed.redis_followed, followed.upstream_calls) == (KEYS_IN_PROCESS,) * 2 + (0,)
    bound = PIPELINES + 1 + 1
    assert max(during.values()) <= bound, during
    opened = int(observer.info("stats")["total_connections_received"]) - opened_before
    # The observer's own connection is one of them; none was dropped and opened again.
    assert opened <= 1 + 2 * bound, opened
    observer.close()
