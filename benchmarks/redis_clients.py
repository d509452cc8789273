"""redis-py against valkey-glide for the fleet backend's load: many concurrent elections.

Run: ``python -m benchmarks.redis_clients [redis://127.0.0.1:6379/0]``. One process sends
BURST concurrent calls of the election script (SET NX + GET, on distinct keys), as a
burst of distinct flights does, through: redis-py asyncio with an unbounded pool (what
the backend did), redis-py with concurrency bounded to 16 connections (what it does now)
and valkey-glide (one multiplexed connection, a Rust core). It prints the burst's wall
time and the connections each opened (``INFO clients``' total_connections_received).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

from httpx_coalesce.redis._scripts import ACQUIRE

BURST = 2000
ROUNDS = 5


async def _connections(url: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        info = await client.info("stats")
        return int(info["total_connections_received"])
    finally:
        await client.aclose()


async def _measure(url: str, name: str, run: Callable[[list[str]], Awaitable[list[object]]]) -> None:
    times = []
    failed = 0
    before = await _connections(url)
    for _ in range(ROUNDS):
        keys = [f"bench-clients:{uuid.uuid4().hex}" for _ in range(BURST)]
        start = time.perf_counter()
        replies = await run(keys)
        failed += sum(isinstance(reply, BaseException) for reply in replies)
        times.append(time.perf_counter() - start)
        cleanup = redis.asyncio.Redis.from_url(url)
        await cleanup.delete(*keys)
        await cleanup.aclose()
    # Not counted: the cleanup clients, one a round, and the probe that reads the count.
    opened = await _connections(url) - before - ROUNDS - 1
    best = min(times)
    print(
        f"{name:48} {best * 1000:7.1f} ms per {BURST} elections"
        f"  {opened:5d} connections opened  {failed:5d} failed"
    )


async def main(url: str) -> None:
    unbounded = redis.asyncio.Redis.from_url(url, max_connections=10_000)
    script = unbounded.register_script(ACQUIRE)

    async def redis_py_unbounded(keys: list[str]) -> list[object]:
        replies = await asyncio.gather(
            *(script(keys=[key, f"{key}:round"], args=["a" * 16, 5000]) for key in keys),
            return_exceptions=True,
        )
        return list(replies)

    bounded = redis.asyncio.Redis.from_url(url, max_connections=10_000)
    bounded_script = bounded.register_script(ACQUIRE)
    gate = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with gate:
            await bounded_script(keys=[key, f"{key}:round"], args=["a" * 16, 5000])

    async def redis_py_bounded(keys: list[str]) -> list[object]:
        return await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)

    async def redis_py_batched(keys: list[str]) -> list[object]:
        # What the backend's batcher does: calls arriving together share a pipeline.
        async def batch(chunk: list[str]) -> list[object]:
            async with gate:
                pipe = bounded.pipeline(transaction=False)
                for key in chunk:
                    await bounded_script(keys=[key, f"{key}:round"], args=["a" * 16, 5000], client=pipe)
                return list(await pipe.execute(raise_on_error=False))

        chunks = [keys[i : i + 64] for i in range(0, len(keys), 64)]
        replies = await asyncio.gather(*(batch(chunk) for chunk in chunks), return_exceptions=True)
        return [item for reply in replies for item in (reply if isinstance(reply, list) else [reply])]

    from httpx_coalesce.redis._names import new_token
    from httpx_coalesce.redis._ops import AsyncioOps, Lease

    piped = redis.asyncio.Redis.from_url(url)
    ops = AsyncioOps(piped, piped, 1.0, timeout=0.25, cap=1.0)

    async def redis_py_auto_pipelined(keys: list[str]) -> list[object]:
        # The backend's own asyncio ops: one queue, pipelines of what queued meanwhile.
        leases = [Lease(key, f"{key}:stream", new_token(), f"{key}:round") for key in keys]
        elections = (ops.acquire(lease, 5000) for lease in leases)
        replies = await asyncio.gather(*elections, return_exceptions=True)
        return list(replies)

    await _measure(url, "redis-py asyncio, auto-pipelined (the backend)", redis_py_auto_pipelined)
    await ops.aclose()
    await _measure(url, "redis-py asyncio, unbounded pool", redis_py_unbounded)
    await _measure(url, "redis-py asyncio, 16 conns, pipelines of 64", redis_py_batched)
    await _measure(url, "redis-py asyncio, 16 connections", redis_py_bounded)
    await unbounded.aclose()
    await bounded.aclose()

    try:
        # Optional (pip install valkey-glide), and untyped where installed: taken as Any.
        glide_api: Any = importlib.import_module("glide")
    except ImportError:
        print("valkey-glide is not installed: pip install valkey-glide")
        return
    host, port = url.split("//")[1].split("/")[0].split(":")
    glide = await glide_api.GlideClient.create(
        glide_api.GlideClientConfiguration([glide_api.NodeAddress(host, int(port))])
    )
    glide_script = glide_api.Script(ACQUIRE)

    async def valkey_glide(keys: list[str]) -> list[object]:
        replies = await asyncio.gather(
            *(
                glide.invoke_script(glide_script, keys=[key, f"{key}:round"], args=["a" * 16, "5000"])
                for key in keys
            ),
            return_exceptions=True,
        )
        return list(replies)

    await _measure(url, "valkey-glide (multiplexed)", valkey_glide)
    await glide.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
