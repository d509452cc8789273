"""The pipelines of one event loop's commands (httpx_coalesce/redis/_ops.py), and a
cluster client's first look at the cluster.

A burst of elections goes out in short pipelines, a few at once: Redis reads each whole in
one turn and answers it at the end of that turn, so a process that sent last is answered
after one turn over what every connection sent meanwhile, not after the whole fleet's
burst. And a Redis that says nothing fails a queued burst at its first timeout, not at one
timeout per pipeline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.asyncio.client
from redis.asyncio.connection import Connection

from httpx_coalesce.redis import RedisBackend
from httpx_coalesce.redis._errors import RedisTrouble
from httpx_coalesce.redis._names import FlightKeys, new_token
from httpx_coalesce.redis._ops import BATCH, PIPELINES, AsyncioOps, Lease
from httpx_coalesce.redis._settings import DEFAULT_PREFIX

from .conftest import StartRedis
from .servers import Cluster
from .test_fail_open import FakeRedis

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

#: What Redis reads from a connection in one turn of its event loop (PROTO_IOBUF_LEN).
REDIS_READ = 16 * 1024

#: More elections than the pipelines out at once carry: some wait for a second wave.
BURST = 3 * PIPELINES * BATCH + 1


class Pipelines:
    """What the pipelines a client sent carried, and how many were out at once."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.lengths: list[int] = []
        self.out = 0
        self.most_out = 0


class SpiedPipeline(redis.asyncio.client.Pipeline):
    seen: Pipelines

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.seen.sizes.append(len(self.command_stack))
        packed = Connection().pack_commands([args for args, _ in self.command_stack])
        self.seen.lengths.append(sum(len(part) for part in packed))
        self.seen.out += 1
        self.seen.most_out = max(self.seen.most_out, self.seen.out)
        try:
            return await super().execute(raise_on_error)
        finally:
            self.seen.out -= 1


class SpiedRedis(redis.asyncio.Redis):
    seen: Pipelines

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> SpiedPipeline:
        pipe = SpiedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.seen = self.seen
        return pipe


def _leases(count: int, prefix: str = DEFAULT_PREFIX) -> list[Lease]:
    leases = []
    for number in range(count):
        # Request keys are 40 hex digits (httpx_coalesce/_key.py).
        keys, token = FlightKeys(prefix, f"{number:040x}"), new_token()
        leases.append(Lease(keys.lease, keys.stream(token), token, keys.round(token)))
    return leases


@pytest.fixture
def hung_redis() -> Iterator[FakeRedis]:
    fake = FakeRedis(reply=None)
    yield fake
    fake.close()


async def test_a_burst_of_elections_goes_out_in_short_pipelines_and_each_is_answered(
    redis_server: StartRedis,
) -> None:
    client = SpiedRedis.from_url(redis_server().url)
    assert isinstance(client, SpiedRedis)
    client.seen = seen = Pipelines()
    ops = AsyncioOps(client, client, 0.1, timeout=0.25, cap=1.0)
    won: list[str | None] = []

    async def elect(lease: Lease) -> None:
        won.append(await ops.acquire(lease, 5000))

    try:
        async with anyio.create_task_group() as group:
            for lease in _leases(BURST):
                group.start_soon(elect, lease)
    finally:
        await ops.aclose()
    # Distinct keys: every caller leads its own.
    assert won == [None] * BURST
    # (A fresh Redis: the first wave goes twice, once more after loading the scripts.)
    assert max(seen.sizes) == BATCH
    assert max(seen.lengths) <= REDIS_READ, max(seen.lengths)
    assert seen.most_out == PIPELINES


async def test_a_silent_redis_fails_a_queued_burst_at_its_first_timeout(hung_redis: FakeRedis) -> None:
    """Without that, each wave of pipelines would wait out a timeout of its own, on
    connections of its own (redis-py drops one whose command was cancelled)."""
    client = redis.asyncio.Redis.from_url(hung_redis.url, socket_timeout=30, socket_connect_timeout=30)
    ops = AsyncioOps(client, client, 0.05, timeout=0.1, cap=0.4)
    failed: list[str] = []

    async def elect(lease: Lease) -> None:
        with pytest.raises(RedisTrouble) as trouble:
            await ops.acquire(lease, 5000)
        failed.append(str(trouble.value))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for lease in _leases(BURST):
                    group.start_soon(elect, lease)
    finally:
        await ops.aclose()
    assert len(failed) == BURST
    assert all("no answer from Redis" in why for why in failed), set(failed)
    # The first wave only: one connection per pipeline out.
    assert hung_redis.connections == PIPELINES


async def test_a_loop_too_busy_to_hear_redis_sends_what_queued_in_the_next_pipelines(
    hung_redis: FakeRedis,
) -> None:
    """The other side of the rule above: a timeout that says this loop was busy, not
    that Redis was silent, leaves what queued to the next pipelines, which may be heard."""
    client = redis.asyncio.Redis.from_url(hung_redis.url, socket_timeout=30, socket_connect_timeout=30)
    ops = AsyncioOps(client, client, 0.05, timeout=0.1, cap=0.4)
    loop = asyncio.get_running_loop()
    busy = True

    def keep_busy() -> None:
        # The loop's thread does something else: no timer runs on time.
        time.sleep(0.06)
        if busy:
            loop.call_soon(keep_busy)

    failed: list[str] = []

    async def elect(lease: Lease) -> None:
        with pytest.raises(RedisTrouble) as trouble:
            await ops.acquire(lease, 5000)
        failed.append(str(trouble.value))

    loop.call_soon(keep_busy)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                # One call more than the first pipelines carry: a second wave.
                for lease in _leases(PIPELINES * BATCH + 1):
                    group.start_soon(elect, lease)
    finally:
        busy = False
        await ops.aclose()
    assert all("busy event loop" in why for why in failed), set(failed)
    assert hung_redis.connections == PIPELINES + 1


async def test_elections_at_once_on_a_fresh_cluster_client_all_reach_the_cluster(
    redis_cluster: Cluster,
) -> None:
    """redis-py's asyncio cluster client, given many commands before it first looked at
    the cluster, dropped connections others were opening: most of 24 such elections
    failed open (each an extra upstream call) before any fault."""
    prefix = f"first-look-{uuid.uuid4().hex[:8]}:"
    backend = RedisBackend.from_url(redis_cluster.url, cluster=True, prefix=prefix)
    ops = backend._clients.async_ops()
    won: list[str | None] = []
    failed: list[str] = []

    async def elect(lease: Lease) -> None:
        try:
            won.append(await ops.acquire(lease, 5000))
        except RedisTrouble as trouble:
            failed.append(str(trouble))

    try:
        async with anyio.create_task_group() as group:
            for lease in _leases(24, prefix):
                group.start_soon(elect, lease)
    finally:
        await backend._clients.aclose()
        with redis_cluster.client() as client:
            for key in client.scan_iter(match=f"{prefix}*", target_nodes=client.PRIMARIES):
                client.delete(key)
    assert failed == []
    assert won == [None] * 24
