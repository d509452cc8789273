"""The only place that talks to Redis: a few commands, in three flavours.

``SyncOps`` uses a ``redis.Redis`` (or ``RedisCluster``) client, for threads;
``AsyncioOps`` a ``redis.asyncio`` one bound to one asyncio loop; ``ThreadOps`` runs the sync
ones in worker threads, for trio (where redis.asyncio cannot run) and for asyncio when
no asyncio client was given. At most ``COMMANDS`` commands run at once per flavour and
event loop, and the followers' blocking reads go through one reader per bucket
(``_reader``), so a burst opens a bounded number of connections. Every failure, timeout
or unexpected answer comes out as :class:`RedisTrouble`; cancellation passes through
untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio.to_thread
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from ._errors import Garbage, RedisTrouble
from ._names import is_token, tag_of
from ._reader import (
    READ_COUNT,
    AsyncioReader,
    Streams,
    ThreadReader,
    parse_entries,
    refresh_slots,
    refresh_slots_sync,
)
from ._records import Record
from ._scripts import ACQUIRE, APPEND, RENEW

__all__ = ["AsyncOps", "AsyncioOps", "Entry", "Lease", "Read", "SyncOps", "ThreadOps"]

#: (stream entry id, record type, record data)
Entry = tuple[bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Lease:
    """One round: the key's lease (which elects), the round's stream, the leader's
    token, and the round's own heartbeat key (whether its leader is alive; see
    ``_scripts``)."""

    key: str
    stream: str
    token: str
    round: str


@dataclass(frozen=True, slots=True)
class Read:
    """New entries of a stream, and the lease's value once the read returned."""

    entries: list[Entry]
    lease: bytes | None


class AsyncOps(Protocol):
    #: Longest a read may block, in seconds.
    block: float

    async def acquire(self, lease: Lease, lease_ms: int) -> str | None: ...

    async def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
        retake: bool = False,
    ) -> bool: ...

    async def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read: ...

    async def window_get(self, key: str) -> bytes | None: ...

    async def window_put(self, key: str, value: bytes, ttl_ms: int) -> None: ...


@contextlib.contextmanager
def _trouble() -> Iterator[None]:
    try:
        yield
    except RedisTrouble:
        raise
    except Exception as error:
        # Connection refused or reset, timeouts, protocol errors, OOM, scripts
        # refused: the caller needs to know only that Redis cannot help right now.
        raise RedisTrouble(f"{type(error).__name__}: {error}") from error


def _append_args(
    token: str,
    records: Sequence[Record],
    lease_ms: int,
    ttl_ms: int,
    final: bool,
    expect_stream: bool = False,
    retake: bool = False,
) -> list[bytes | str | int]:
    args: list[bytes | str | int] = [
        token,
        lease_ms,
        ttl_ms,
        b"1" if final else b"0",
        b"2" if retake else b"1" if expect_stream else b"0",
    ]
    for kind, data in records:
        args.append(kind)
        args.append(data)
    return args


def _acquired(reply: Any, token: str) -> str | None:
    """None if *token* won the lease, else the token of the leader that holds it."""
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes) and is_token(reply[1]):
        won, holder = reply
        if won == 1 and holder == token.encode():
            return None
        if won == 0:
            return str(holder.decode())
    raise Garbage(f"unexpected answer to the election: {reply!r:.100}")


def _appended(reply: Any) -> bool:
    if reply in (0, 1):
        return bool(reply)
    raise Garbage(f"unexpected answer to an append: {reply!r:.100}")


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREAD reply of one stream (RESP2 or RESP3 shape)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
    elif isinstance(reply, list) and isinstance(reply[0], list | tuple) and len(reply[0]) == 2:
        streams = [reply[0][1]]
    else:
        raise Garbage(f"unexpected stream read: {reply!r:.100}")
    return [entry for stream in streams for entry in parse_entries(stream)]


def _lease_value(reply: Any) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    raise Garbage(f"unexpected lease value: {reply!r:.100}")


def _window_value(reply: Any) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    raise Garbage(f"unexpected window entry: {reply!r:.100}")


def _block_ms(block: float | None) -> int | None:
    # XREAD BLOCK 0 means "forever": a read that must not wait sends no BLOCK at all.
    return None if block is None else max(1, round(block * 1000))


#: Redis commands one process sends at once, per event loop (and once more for its
#: threads): connections are opened only up to this, however large the burst. A
#: command that cannot start within the client's socket timeout is Redis trouble.
COMMANDS = 16

#: Script calls one pipeline carries at most.
BATCH = 256


def _cluster(client: Any) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster) or hasattr(
        client, "get_node_from_key"
    )


def _by_tag(leases: Sequence[Lease], cluster: bool) -> dict[str, list[int]]:
    """The leases' positions, grouped so that one script call stays within one slot."""
    groups: dict[str, list[int]] = {}
    for index, lease in enumerate(leases):
        groups.setdefault(tag_of(lease.key) if cluster else "", []).append(index)
    return groups


def _renew_call(leases: Sequence[Lease], lease_ms: int, ttl_ms: int) -> tuple[list[str], list[str | int]]:
    keys: list[str] = []
    args: list[str | int] = [lease_ms, ttl_ms]
    for lease in leases:
        keys += [lease.key, lease.stream, lease.round]
    args += [lease.token for lease in leases]
    return keys, args


def _renewed(reply: Any, count: int) -> list[bool]:
    if isinstance(reply, list) and len(reply) == count:
        return [_appended(item) for item in reply]
    raise Garbage(f"unexpected answer to a renewal: {reply!r:.100}")


class SyncOps:
    def __init__(
        self, commands: Any, reads: Any, block: float, *, prefix: str = "", wait: float = 1.0
    ) -> None:
        self._commands = commands
        self._reads = reads
        self.block = block
        self._cluster = _cluster(commands)
        self._prefix = prefix
        self._wait = wait
        self._gate = threading.BoundedSemaphore(COMMANDS)
        self._acquire = commands.register_script(ACQUIRE)
        self._append = commands.register_script(APPEND)
        self._renew = commands.register_script(RENEW)
        self._readers: dict[str, ThreadReader] = {}
        self._readers_lock = threading.Lock()

    @contextlib.contextmanager
    def _gated(self) -> Iterator[None]:
        if not self._gate.acquire(timeout=self._wait):
            raise RedisTrouble(f"{COMMANDS} Redis commands already in progress for {self._wait} s")
        try:
            with _trouble():
                yield
        finally:
            self._gate.release()

    def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        with self._gated():
            reply = self._acquire(keys=[lease.key, lease.round], args=[lease.token, lease_ms])
        return _acquired(reply, lease.token)

    def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
        retake: bool = False,
    ) -> bool:
        with self._gated():
            reply = self._append(
                keys=[lease.key, lease.stream, lease.round],
                args=_append_args(lease.token, records, lease_ms, ttl_ms, final, expect_stream, retake),
            )
        return _appended(reply)

    def ping(self) -> None:
        """Open a connection ahead of need (errors are the caller's to ignore)."""
        with self._gated():
            self._commands.ping()

    def renew(self, leases: Sequence[Lease], lease_ms: int, ttl_ms: int) -> list[bool]:
        """Extend many leases in one call per slot; False for each no longer held."""
        held = [False] * len(leases)
        for positions in _by_tag(leases, self._cluster).values():
            group = [leases[i] for i in positions]
            keys, args = _renew_call(group, lease_ms, ttl_ms)
            with self._gated():
                reply = self._renew(keys=keys, args=args)
            for i, still in zip(positions, _renewed(reply, len(group)), strict=True):
                held[i] = still
        return held

    def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        """New entries after *after*, waiting up to *block* seconds for some (None: no
        wait), and the lease's value once the read returned."""
        if block is not None:
            entries, lease = self._reader(stream).read(stream, lease_key, after, block)
            return Read(entries, _lease_value(lease))
        try:
            with self._gated():
                pipe = self._commands.pipeline(transaction=False)
                pipe.xread({stream: after}, count=READ_COUNT)
                pipe.get(lease_key)
                entries, lease = pipe.execute()
        except RedisTrouble as trouble:
            refresh_slots_sync(self._commands, trouble.__cause__)
            raise
        return Read(_entries(entries), _lease_value(lease))

    def _reader(self, stream: str) -> ThreadReader:
        tag = tag_of(stream) if self._cluster else "{hc}"
        reader = self._readers.get(tag)
        if reader is None:
            with self._readers_lock:
                reader = self._readers.get(tag)
                if reader is None:
                    streams = Streams(tag, self._prefix, self.block, self._cluster)
                    reader = ThreadReader(streams, self._reads, self._commands, self._gated, self.block)
                    self._readers[tag] = reader
        return reader

    def close(self) -> None:
        for reader in list(self._readers.values()):
            reader.close()

    def window_get(self, key: str) -> bytes | None:
        with self._gated():
            return _window_value(self._commands.get(key))

    def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        with self._gated():
            self._commands.set(key, value, px=ttl_ms)


class AsyncioOps:
    def __init__(
        self, commands: Any, reads: Any, block: float, *, prefix: str = "", wait: float = 1.0
    ) -> None:
        self._commands = commands
        self._reads = reads
        self.block = block
        self._cluster = _cluster(commands)
        self._prefix = prefix
        self._wait = wait
        self._gate = asyncio.Semaphore(COMMANDS)
        self._acquire = commands.register_script(ACQUIRE)
        self._append = commands.register_script(APPEND)
        self._readers: dict[str, AsyncioReader] = {}
        self._batch: list[tuple[Any, list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Open the readers' connection once Redis first answered: a burst that needs it
        #: later may keep the event loop too busy to finish connecting within the
        #: connect timeout. (Not before: a failing Redis is left alone after one try.)
        self._cold_reads = reads is not commands

    @contextlib.asynccontextmanager
    async def _gated(self) -> AsyncIterator[None]:
        if self._gate.locked():
            try:
                await asyncio.wait_for(self._gate.acquire(), self._wait)
            except asyncio.TimeoutError:
                raise RedisTrouble(
                    f"{COMMANDS} Redis commands already in progress for {self._wait} s"
                ) from None
        else:
            # Free: taken at once, without the task wait_for would start.
            await self._gate.acquire()
        try:
            with _trouble():
                yield
        finally:
            self._gate.release()

    def _answered(self) -> None:
        if self._cold_reads:
            self._cold_reads = False
            warming = asyncio.get_running_loop().create_task(self._warm(self._reads))
            self._sending.add(warming)
            warming.add_done_callback(self._sending.discard)

    @staticmethod
    async def _warm(reads: Any) -> None:
        with contextlib.suppress(Exception):
            await reads.ping()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run *script*. The calls of all flights made in one turn of the event loop go
        out as one pipeline (a burst of elections is one round trip on one connection,
        not one connection each); a cluster, whose pipelines refuse scripts, gets one
        call each."""
        if self._cluster:
            async with self._gated():
                reply = await script(keys=keys, args=args)
            self._answered()
            return reply
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((script, [*keys, *args], future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._send_batch)
        return await future

    def _send_batch(self) -> None:
        # A call whose caller was cancelled meanwhile is not sent: an election nobody
        # waits for would leave a lease that no leader releases.
        batch = [call for call in self._batch if not call[2].done()]
        self._batch = []
        for start in range(0, len(batch), BATCH):
            task = asyncio.get_running_loop().create_task(self._send(batch[start : start + BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Any, list[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self._gated():
                replies = await self._pipelined(batch)
                if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                    # A Redis restarted or flushed since: load the scripts, once more.
                    for script in {id(script): script for script, _, _ in batch}.values():
                        await self._commands.script_load(script.script)
                    replies = await self._pipelined(batch)
            self._answered()
        except RedisTrouble as trouble:
            replies = [trouble] * len(batch)
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                error = (
                    reply
                    if isinstance(reply, RedisTrouble)
                    else RedisTrouble(f"{type(reply).__name__}: {reply}")
                )
                future.set_exception(error)
            else:
                future.set_result(reply)

    async def _pipelined(self, batch: list[tuple[Any, list[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self._commands.pipeline(transaction=False)
        for script, arguments, _ in batch:
            numkeys = 2 if script is self._acquire else 3
            pipe.evalsha(script.sha, numkeys, *arguments)
        return list(await pipe.execute(raise_on_error=False))

    async def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        reply = await self._call(self._acquire, [lease.key, lease.round], [lease.token, lease_ms])
        return _acquired(reply, lease.token)

    async def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
        retake: bool = False,
    ) -> bool:
        args = _append_args(lease.token, records, lease_ms, ttl_ms, final, expect_stream, retake)
        reply = await self._call(self._append, [lease.key, lease.stream, lease.round], args)
        return _appended(reply)

    async def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        if block is not None:
            entries, lease = await self._reader(stream).read(stream, lease_key, after, block)
            return Read(entries, _lease_value(lease))
        try:
            async with self._gated():
                pipe = self._commands.pipeline(transaction=False)
                pipe.xread({stream: after}, count=READ_COUNT)
                pipe.get(lease_key)
                entries, lease = await pipe.execute()
        except RedisTrouble as trouble:
            await refresh_slots(self._commands, trouble.__cause__)
            raise
        return Read(_entries(entries), _lease_value(lease))

    def _reader(self, stream: str) -> AsyncioReader:
        tag = tag_of(stream) if self._cluster else "{hc}"
        reader = self._readers.get(tag)
        if reader is None:
            streams = Streams(tag, self._prefix, self.block, self._cluster)
            reader = self._readers[tag] = AsyncioReader(
                streams, self._reads, self._commands, self._gated, self.block
            )
        return reader

    async def window_get(self, key: str) -> bytes | None:
        async with self._gated():
            return _window_value(await self._commands.get(key))

    async def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        async with self._gated():
            await self._commands.set(key, value, px=ttl_ms)

    async def aclose(self) -> None:
        for reader in list(self._readers.values()):
            await reader.aclose()
        with contextlib.suppress(Exception):
            await self._commands.aclose()
        if self._reads is not self._commands:
            with contextlib.suppress(Exception):
                await self._reads.aclose()


class ThreadOps:
    """The sync commands, each in a worker thread.

    A cancelled caller does not wait for its thread (a blocked read may take up to
    ``block`` seconds to return); the lease check in every append makes whatever such
    a thread still does harmless.
    """

    def __init__(self, ops: SyncOps, limiter: anyio.CapacityLimiter) -> None:
        self._ops = ops
        self._limiter = limiter
        self.block = ops.block

    async def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        return await anyio.to_thread.run_sync(
            partial(self._ops.acquire, lease, lease_ms), abandon_on_cancel=True, limiter=self._limiter
        )

    async def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
        retake: bool = False,
    ) -> bool:
        return await anyio.to_thread.run_sync(
            partial(self._ops.append, lease, records, lease_ms, ttl_ms, final, expect_stream, retake),
            abandon_on_cancel=True,
            limiter=self._limiter,
        )

    async def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        return await anyio.to_thread.run_sync(
            partial(self._ops.read, lease_key, stream, after, block),
            abandon_on_cancel=True,
            limiter=self._limiter,
        )

    async def window_get(self, key: str) -> bytes | None:
        return await anyio.to_thread.run_sync(
            partial(self._ops.window_get, key), abandon_on_cancel=True, limiter=self._limiter
        )

    async def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        await anyio.to_thread.run_sync(
            partial(self._ops.window_put, key, value, ttl_ms), abandon_on_cancel=True, limiter=self._limiter
        )
