"""The only place that talks to Redis: a few commands, in three flavours.

``SyncOps`` uses a ``redis.Redis`` client, for threads; ``AsyncioOps`` a
``redis.asyncio.Redis`` client bound to one asyncio loop; ``ThreadOps`` runs the sync
ones in worker threads, for trio (where redis.asyncio cannot run) and for asyncio when
no asyncio client was given. Every failure, timeout or unexpected answer comes out as
:class:`RedisTrouble`; cancellation passes through untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio.to_thread
import redis
import redis.asyncio

from ._errors import Garbage, RedisTrouble
from ._names import is_token
from ._records import Record
from ._scripts import ACQUIRE, APPEND

__all__ = ["AsyncOps", "AsyncioOps", "Entry", "Lease", "Read", "SyncOps", "ThreadOps"]

#: (stream entry id, record type, record data)
Entry = tuple[bytes, bytes, bytes]

#: Entries one read returns at most.
READ_COUNT = 256


@dataclass(frozen=True, slots=True)
class Lease:
    """One round's lease: its key, its stream, and the leader's token."""

    key: str
    stream: str
    token: str


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
) -> list[bytes | str | int]:
    args: list[bytes | str | int] = [
        token,
        lease_ms,
        ttl_ms,
        b"1" if final else b"0",
        b"1" if expect_stream else b"0",
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
    entries: list[Entry] = []
    for stream in streams:
        for item in stream:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise Garbage(f"unexpected stream entry: {item!r:.100}")
            entry_id, fields = item
            if not isinstance(entry_id, bytes) or not isinstance(fields, dict):
                raise Garbage(f"unexpected stream entry: {item!r:.100}")
            kind, data = fields.get(b"t"), fields.get(b"d")
            if not isinstance(kind, bytes) or not isinstance(data, bytes):
                raise Garbage(f"unexpected stream entry: {item!r:.100}")
            entries.append((entry_id, kind, data))
    return entries


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


class SyncOps:
    def __init__(self, commands: redis.Redis, reads: redis.Redis, block: float) -> None:
        self._commands = commands
        self._reads = reads
        self.block = block
        self._acquire = commands.register_script(ACQUIRE)
        self._append = commands.register_script(APPEND)

    def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        with _trouble():
            reply = self._acquire(keys=[lease.key], args=[lease.token, lease_ms])
        return _acquired(reply, lease.token)

    def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
    ) -> bool:
        with _trouble():
            reply = self._append(
                keys=[lease.key, lease.stream],
                args=_append_args(lease.token, records, lease_ms, ttl_ms, final, expect_stream),
            )
        return _appended(reply)

    def renew(self, leases: Sequence[Lease], lease_ms: int, ttl_ms: int) -> list[bool]:
        """Extend many leases in one round trip; False for each that is no longer held."""
        with _trouble():
            pipe = self._commands.pipeline(transaction=False)
            for lease in leases:
                self._append(
                    keys=[lease.key, lease.stream],
                    args=_append_args(lease.token, (), lease_ms, ttl_ms, final=False),
                    client=pipe,
                )
            replies = pipe.execute()
        return [_appended(reply) for reply in replies]

    def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        with _trouble():
            pipe = self._reads.pipeline(transaction=False)
            # The GET runs once the read returns, so an empty read comes with the
            # lease as it is after the wait, not before it.
            pipe.xread({stream: after}, count=READ_COUNT, block=_block_ms(block))
            pipe.get(lease_key)
            entries, lease = pipe.execute()
        return Read(_entries(entries), _lease_value(lease))

    def window_get(self, key: str) -> bytes | None:
        with _trouble():
            return _window_value(self._commands.get(key))

    def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        with _trouble():
            self._commands.set(key, value, px=ttl_ms)


class AsyncioOps:
    def __init__(self, commands: redis.asyncio.Redis, reads: redis.asyncio.Redis, block: float) -> None:
        self._commands = commands
        self._reads = reads
        self.block = block
        self._acquire = commands.register_script(ACQUIRE)
        self._append = commands.register_script(APPEND)

    async def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        with _trouble():
            reply = await self._acquire(keys=[lease.key], args=[lease.token, lease_ms])
        return _acquired(reply, lease.token)

    async def append(
        self,
        lease: Lease,
        records: Sequence[Record],
        lease_ms: int,
        ttl_ms: int,
        final: bool,
        expect_stream: bool = False,
    ) -> bool:
        with _trouble():
            reply = await self._append(
                keys=[lease.key, lease.stream],
                args=_append_args(lease.token, records, lease_ms, ttl_ms, final, expect_stream),
            )
        return _appended(reply)

    async def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        with _trouble():
            pipe = self._reads.pipeline(transaction=False)
            pipe.xread({stream: after}, count=READ_COUNT, block=_block_ms(block))
            pipe.get(lease_key)
            entries, lease = await pipe.execute()
        return Read(_entries(entries), _lease_value(lease))

    async def window_get(self, key: str) -> bytes | None:
        with _trouble():
            return _window_value(await self._commands.get(key))

    async def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        with _trouble():
            await self._commands.set(key, value, px=ttl_ms)

    async def aclose(self) -> None:
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
    ) -> bool:
        return await anyio.to_thread.run_sync(
            partial(self._ops.append, lease, records, lease_ms, ttl_ms, final, expect_stream),
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
