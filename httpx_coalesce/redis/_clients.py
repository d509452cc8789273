"""The Redis clients of one backend, made when first needed.

Threads share one pair of sync clients (commands, and the followers' blocking reads).
A ``redis.asyncio`` client belongs to the event loop that made it, so each asyncio loop
gets its own pair. On trio, where ``redis.asyncio`` cannot run, and on asyncio when no
asyncio client factory was given, the sync clients run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable

import anyio
import redis
import redis.asyncio

from ._errors import RedisTrouble
from ._ops import AsyncioOps, AsyncOps, SyncOps, ThreadOps

__all__ = ["AsyncClientFactory", "Clients"]

AsyncClientFactory = Callable[[], redis.asyncio.Redis]

#: Worker threads one event loop may use for Redis at once (trio): one per followed
#: flight blocked in a read, so well above anyio's default of 40.
THREADS = 256


def _running_loop() -> object:
    """The running event loop: an asyncio loop, or the trio run's token."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token()


def _socket_timeout(client: redis.Redis | redis.asyncio.Redis) -> float | None:
    value = client.connection_pool.connection_kwargs.get("socket_timeout")
    return float(value) if isinstance(value, int | float) else None


def _check(client: redis.Redis | redis.asyncio.Redis) -> None:
    if client.get_encoder().decode_responses:
        raise ValueError("the Redis client must return bytes: create it without decode_responses=True")


class Clients:
    def __init__(
        self,
        client: redis.Redis,
        read_client: redis.Redis | None,
        async_client: AsyncClientFactory | None,
        async_read_client: AsyncClientFactory | None,
        heartbeat: float,
        owned: bool,
    ) -> None:
        _check(client)
        if read_client is not None:
            _check(read_client)
        self._client = client
        self._read_client = read_client
        self._async_client = async_client
        self._async_read_client = async_read_client
        self._heartbeat = heartbeat
        self._owned = owned
        self._lock = threading.RLock()
        self._sync: SyncOps | None = None
        self._async: weakref.WeakKeyDictionary[object, AsyncOps] = weakref.WeakKeyDictionary()

    def own(self) -> None:
        """Close the sync clients on close: they were made for this backend."""
        self._owned = True

    def _block(self, reads: redis.Redis | redis.asyncio.Redis, separate: bool) -> float:
        """The longest a follower's read may block on *reads*.

        A read that blocks past the client's socket timeout would fail as a timeout. A
        separate read client is made for blocking, so it blocks a whole heartbeat; the
        command client is kept well inside its timeout instead.
        """
        if separate:
            return self._heartbeat
        timeout = _socket_timeout(reads)
        return self._heartbeat if timeout is None else min(self._heartbeat, timeout / 2)

    def sync_ops(self) -> SyncOps:
        ops = self._sync
        if ops is None:
            with self._lock:
                ops = self._sync
                if ops is None:
                    reads = self._read_client or self._client
                    block = self._block(reads, self._read_client is not None)
                    ops = self._sync = SyncOps(self._client, reads, block)
        return ops

    def async_ops(self) -> AsyncOps:
        """The ops for the running event loop. Raises RedisTrouble if a client cannot be made."""
        loop = _running_loop()
        ops = self._async.get(loop)
        if ops is not None:
            return ops
        with self._lock:
            ops = self._async.get(loop)
            if ops is None:
                ops = self._async[loop] = self._make_async_ops(loop)
        return ops

    def _make_async_ops(self, loop: object) -> AsyncOps:
        if isinstance(loop, asyncio.AbstractEventLoop) and self._async_client is not None:
            try:
                client = self._async_client()
                _check(client)
                reads = client if self._async_read_client is None else self._async_read_client()
                _check(reads)
            except Exception as error:
                raise RedisTrouble(f"cannot make an asyncio Redis client: {error}") from error
            return AsyncioOps(client, reads, self._block(reads, reads is not client))
        return ThreadOps(self.sync_ops(), anyio.CapacityLimiter(THREADS))

    async def aclose(self) -> None:
        """Close the running loop's asyncio clients, then the rest."""
        with contextlib.suppress(RuntimeError):
            ops = self._async.pop(_running_loop(), None)
            if isinstance(ops, AsyncioOps):
                await ops.aclose()
        self.close()

    def close(self) -> None:
        # asyncio clients of other loops cannot be closed from here; dropping them
        # lets their connections go with the loop.
        self._async.clear()
        if self._owned:
            for client in {id(c): c for c in (self._client, self._read_client) if c is not None}.values():
                with contextlib.suppress(Exception):
                    client.close()
