"""The Redis clients of one backend, made when first needed.

Threads share one pair of sync clients (commands, and the followers' blocking reads).
A client is made on first use, so a Redis (or a cluster, or sentinels) unreachable when
the backend is built costs the first flights a fall-back, never an exception: a client
that cannot be made is Redis trouble, and the next flight tries again.
A ``redis.asyncio`` client belongs to the event loop that made it, so each asyncio loop
gets its own pair. On trio, where ``redis.asyncio`` cannot run, and on asyncio when no
asyncio client factory was given, the sync clients run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import anyio
import redis.asyncio.connection
import redis.connection

from ._errors import RedisTrouble
from ._ops import AsyncioOps, AsyncOps, SyncOps, ThreadOps
from ._patience import cap_for

__all__ = [
    "AsyncClientFactory",
    "Clients",
    "SyncClientFactory",
    "check_client",
    "connection_options",
    "quiet_handshake",
]

#: A redis-py client: plain or cluster (sentinel-managed clients are plain ones).
SyncClient = Any
AsyncClient = Any
AsyncClientFactory = Callable[[], AsyncClient]
SyncClientFactory = Callable[[], SyncClient]

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


def connection_options(client: Any) -> dict[str, Any]:
    """The options a client opens its connections with (plain, sentinel or cluster)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return dict(pool.connection_kwargs)
    if hasattr(client, "get_connection_kwargs"):  # redis.cluster.RedisCluster
        return dict(client.get_connection_kwargs())
    return dict(getattr(client, "connection_kwargs", {}))  # redis.asyncio.cluster.RedisCluster


@cache
def _connection_parameters() -> frozenset[str]:
    """What this redis-py's connections take, sync and asyncio alike."""
    sync = inspect.signature(redis.connection.AbstractConnection.__init__).parameters
    asyncio_ = inspect.signature(redis.asyncio.connection.AbstractConnection.__init__).parameters
    return frozenset(sync) & frozenset(asyncio_)


def quiet_handshake(options: Mapping[str, Any]) -> dict[str, Any]:
    """*options* for the clients a backend makes itself, with a shorter handshake.

    redis-py opens a connection with up to five round trips before its first command:
    ``HELLO``, ``CLIENT MAINT_NOTIFICATIONS ON`` (for managed services that announce
    their maintenance), the client's name, and ``CLIENT SETINFO`` twice (the library's
    name and version, for ``CLIENT LIST``). A burst opens a process's connections while
    its first flights wait on them, on a busy event loop where each round trip may take
    a turn: those three are left out, unless *options* name them. Only what this
    redis-py takes (older ones have no maintenance notifications, nor ``driver_info``).
    """
    quiet: dict[str, Any] = {}
    accepted = _connection_parameters()
    given = options.keys() & {"driver_info", "lib_name", "lib_version"}
    if "driver_info" in accepted and not given:
        quiet["driver_info"] = None  # None: no CLIENT SETINFO at all
    elif "lib_name" in accepted and not given:
        quiet.update(lib_name=None, lib_version=None)
    if "maint_notifications_config" in accepted:
        from redis.maint_notifications import MaintNotificationsConfig

        quiet["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return {**quiet, **options}


def _socket_timeout(client: Any) -> float | None:
    value = connection_options(client).get("socket_timeout")
    return float(value) if isinstance(value, int | float) else None


def check_client(client: Any) -> None:
    """Refuse what cannot work: a client that is not redis-py's, or decodes responses."""
    if not (hasattr(client, "register_script") and hasattr(client, "pipeline")):
        raise TypeError(f"not a redis-py client: {type(client).__name__}")
    if connection_options(client).get("decode_responses"):
        raise ValueError("the Redis client must return bytes: create it without decode_responses=True")


def _made(factory: Callable[[], Any], what: str) -> Any:
    try:
        client = factory()
        check_client(client)
    except Exception as error:
        raise RedisTrouble(f"cannot make {what} Redis client: {type(error).__name__}: {error}") from error
    return client


class Clients:
    def __init__(
        self,
        client: SyncClientFactory,
        read_client: SyncClientFactory | None,
        async_client: AsyncClientFactory | None,
        async_read_client: AsyncClientFactory | None,
        heartbeat: float,
        prefix: str,
        owned: bool,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._read_client = read_client
        self._async_client = async_client
        self._async_read_client = async_read_client
        self._heartbeat = heartbeat
        self._prefix = prefix
        self._owned = owned
        #: Set for the clients RedisBackend makes itself: their asyncio clients time out
        #: only at ``cap_for(timeout)``, and the asyncio ops keep *timeout* themselves,
        #: in time the event loop was free (see ``_patience``).
        self._timeout = timeout
        self._lock = threading.RLock()
        self._sync: SyncOps | None = None
        self._made: list[Any] = []
        self._async: weakref.WeakKeyDictionary[object, AsyncOps] = weakref.WeakKeyDictionary()

    def own(self) -> None:
        """Close the sync clients on close: they were made for this backend."""
        self._owned = True

    def _block(self, reads: Any, separate: bool) -> float:
        """The longest a follower's read may block on *reads*.

        A read that blocks past the client's socket timeout would fail as a timeout. A
        separate read client is made for blocking, so it blocks a whole heartbeat; the
        command client is kept well inside its timeout instead.
        """
        if separate:
            return self._heartbeat
        timeout = _socket_timeout(reads)
        return self._heartbeat if timeout is None else min(self._heartbeat, timeout / 2)

    @staticmethod
    def _wait(commands: Any) -> float:
        """How long a command may wait for its turn: four socket timeouts, 1 to 5 s.

        The queue is this process's own burst, not Redis being slow (the socket timeout
        tells that): a busy event loop may take a while to get through it.
        """
        timeout = _socket_timeout(commands)
        return 1.0 if timeout is None else cap_for(timeout)

    def sync_ops(self) -> SyncOps:
        """The ops of the sync clients. Raises RedisTrouble if a client cannot be made."""
        ops = self._sync
        if ops is None:
            with self._lock:
                ops = self._sync
                if ops is None:
                    client = _made(self._client, "the")
                    try:
                        reads = client if self._read_client is None else _made(self._read_client, "the read")
                    except RedisTrouble:
                        self._drop(client)
                        raise
                    self._made += [client] if reads is client else [client, reads]
                    block = self._block(reads, reads is not client)
                    ops = SyncOps(client, reads, block, prefix=self._prefix, wait=self._wait(client))
                    self._sync = ops
        return ops

    def _drop(self, client: Any) -> None:
        if self._owned:
            with contextlib.suppress(Exception):
                client.close()

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
            client = _made(self._async_client, "an asyncio")
            reads = (
                client if self._async_read_client is None else _made(self._async_read_client, "an asyncio")
            )
            block = self._block(reads, reads is not client)
            timeout = self._timeout if self._timeout is not None else _socket_timeout(client)
            cap = cap_for(timeout) if self._timeout is not None and timeout is not None else timeout
            wait = self._wait(client) if self._timeout is None else cap_for(self._timeout)
            return AsyncioOps(client, reads, block, prefix=self._prefix, wait=wait, timeout=timeout, cap=cap)
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
        if self._sync is not None:
            self._sync.close()
        made, self._made = self._made, []
        for client in made:
            self._drop(client)
