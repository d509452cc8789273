"""The only place that talks to Redis: a few commands, in three flavours.

``SyncOps`` uses a ``redis.Redis`` (or ``RedisCluster``) client, for threads;
``AsyncioOps`` a ``redis.asyncio`` one bound to one asyncio loop; ``ThreadOps`` runs the sync
ones in worker threads, for trio (where redis.asyncio cannot run) and for asyncio when
no asyncio client was given. The commands of one asyncio loop are auto-pipelined on at
most ``PIPELINES`` connections, and their timeouts count only time the loop was free to
hear Redis (``_patience``); threads run at most ``COMMANDS`` commands at once. The
followers' blocking reads go through one reader per bucket (``_reader``). So a burst
opens a bounded number of connections, and a busy process is not taken for a slow Redis.
Every failure, timeout or unexpected answer comes out as :class:`RedisTrouble`;
cancellation passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
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
from ._patience import LoopWatch, Silent, patiently
from ._reader import (
    READ_COUNT,
    AsyncioReader,
    Streams,
    ThreadReader,
    parse_entries,
    refresh_slots,
    refresh_slots_sync,
    wake_commands,
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


#: Redis commands one process's threads (sync callers, trio, the lease keeper) send at
#: once: their connections are opened only up to this, however large the burst. A
#: command that cannot start within four socket timeouts (1 to 5 s) is Redis trouble.
COMMANDS = 16

#: Pipelines one event loop has out at once, each on a connection of its own: what
#: queues meanwhile goes in the next. Redis runs one command at a time anyway; more
#: only overlap the round trips, and each is one more connection to open in a burst.
PIPELINES = 4

#: Calls one pipeline carries at most: about what Redis reads from one connection in one
#: turn of its event loop (16 KB; an election is some 300 bytes). Redis takes up to 16 KB
#: from every connection with something to read in each turn and answers it at the end
#: of the turn, so a pipeline this long is answered in the turn that reads it, after
#: what every other connection sent meanwhile: at most processes x ``PIPELINES`` x
#: ``BATCH`` calls. A longer one is answered only after the turns that read all of it,
#: each taking 16 KB from every other connection too: a fleet's first pipelines were then
#: answered only once Redis had been through the whole fleet's burst (8 x 4 x 512 calls:
#: over a second), and a process that sent last heard nothing within its timeout.
BATCH = 32


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
                    reader = ThreadReader(streams, self._reads, self._wake, self.block)
                    self._readers[tag] = reader
        return reader

    def _wake(self, streams: Streams) -> None:
        try:
            with self._gated():
                pipe = self._commands.pipeline(transaction=False)
                wake_commands(pipe, streams)
                pipe.execute()
        except RedisTrouble as trouble:
            refresh_slots_sync(self._commands, trouble.__cause__)
            raise

    def close(self) -> None:
        for reader in list(self._readers.values()):
            reader.close()

    def window_get(self, key: str) -> bytes | None:
        with self._gated():
            return _window_value(self._commands.get(key))

    def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        with self._gated():
            self._commands.set(key, value, px=ttl_ms)


@dataclass(eq=False, slots=True)
class _Call:
    """One caller's commands, waiting to go out in the next pipeline."""

    #: Puts the commands on a pipeline; returns how many it put.
    add: Callable[[Any], int]
    #: Gets their replies, in order (an error reply as the exception).
    future: asyncio.Future[list[Any]]


class AsyncioOps:
    """The commands of one asyncio event loop, auto-pipelined.

    Every command waits in one queue; whatever queued while the previous pipelines were
    out goes in the next, on one of at most ``PIPELINES`` connections. A burst of
    elections, appends and reads is then a few round trips, and a command waits for
    Redis's answers to the commands before it, never for a slot with a timeout of its
    own (that wait is this process's burst, not Redis being slow). On a cluster, whose
    pipelines refuse scripts, each command goes alone, gated as the sync ones are.

    *timeout* and *cap* (seconds): a pipeline that gets no answer within *timeout* of a
    free event loop, or within *cap* in all, is Redis trouble (see ``_patience``); None:
    the clients' own socket timeouts only.
    """

    def __init__(
        self,
        commands: Any,
        reads: Any,
        block: float,
        *,
        prefix: str = "",
        wait: float = 1.0,
        timeout: float | None = None,
        cap: float | None = None,
        read_margin: float = 1.0,
    ) -> None:
        self._commands = commands
        self._reads = reads
        self.block = block
        self._cluster = _cluster(commands)
        self._prefix = prefix
        self._wait = wait
        self._timeout = timeout
        self._cap = timeout if cap is None else cap
        self._read_margin = read_margin
        self._gate = asyncio.Semaphore(COMMANDS)
        self._acquire = commands.register_script(ACQUIRE)
        self._append = commands.register_script(APPEND)
        self._readers: dict[str, AsyncioReader] = {}
        self._queue: list[_Call] = []
        self._flush_due = False
        self._free = PIPELINES
        self._watch = LoopWatch() if timeout is None else LoopWatch(timeout)
        self._sending: set[asyncio.Task[None]] = set()
        #: Open the readers' connection once Redis first answered: a burst that needs it
        #: later may keep the event loop too busy to finish connecting within the
        #: connect timeout. (Not before: a failing Redis is left alone after one try.)
        self._cold_reads = reads is not commands
        #: A cluster's clients look at the cluster (its nodes and slots) once, alone,
        #: before their first commands: see ``_cluster_ready``.
        self._ready: asyncio.Task[None] | None = None
        self._looked = not self._cluster

    async def _timed(self, work: Coroutine[Any, Any, Any], longer: float = 0.0, queued: bool = True) -> Any:
        """Run *work* within the timeout (plus *longer* seconds), patiently."""
        if self._timeout is None or self._cap is None:
            result = await work
        else:
            timeout, cap = self._timeout + longer, self._cap + longer
            result = await patiently(work, timeout, cap, self._watch, queued)
        self._watch.heard = asyncio.get_running_loop().time()
        return result

    async def _timed_read(self, work: Coroutine[Any, Any, Any], block: float) -> Any:
        """A blocking read: its block, and Redis's timer tick that ends it, on top."""
        return await self._timed(work, block + self._read_margin, queued=False)

    async def _cluster_ready(self) -> None:
        """Have the cluster clients look at the cluster before the loop's first commands.

        redis-py's asyncio cluster client, given many commands at once before it first
        looked (each starting that look), drops connections that other commands are still
        opening: of 24 elections at once on a fresh client, 2 to 19 failed ("Connection
        closed by server", or no writer), and each failed open into an extra upstream call,
        before any fault. Once the client has looked alone, none do. The callers that
        come meanwhile wait for the one look and share its outcome: a cluster that cannot
        be reached costs them one timeout, not one each.
        """
        ready = self._ready
        if ready is None:
            ready = self._ready = asyncio.get_running_loop().create_task(self._look())
            # Its outcome is read even if every caller left meanwhile.
            ready.add_done_callback(lambda look: look.cancelled() or look.exception())
        try:
            # Shielded: a caller that leaves does not cancel the others' look.
            await asyncio.shield(ready)
        except RedisTrouble:
            if self._ready is ready:
                self._ready = None  # the next flight looks again
            raise
        self._looked = True

    async def _look(self) -> None:
        clients = [self._commands] if self._reads is self._commands else [self._commands, self._reads]
        with _trouble():
            for client in clients:
                # redis-py's asyncio RedisCluster; a lookalike without it looks by itself.
                initialize = getattr(client, "initialize", None)
                if initialize is not None:
                    await self._timed(initialize())

    @contextlib.asynccontextmanager
    async def _gated(self) -> AsyncIterator[None]:
        if not self._looked:
            await self._cluster_ready()
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
            warming = asyncio.get_running_loop().create_task(self._warm())
            self._sending.add(warming)
            warming.add_done_callback(self._sending.discard)

    async def _warm(self) -> None:
        with contextlib.suppress(Exception):
            await self._timed(self._reads.ping())

    # -- the pipeline ----------------------------------------------------------------

    async def _run(self, add: Callable[[Any], int]) -> list[Any]:
        """Send the commands *add* puts on a pipeline with the next pipeline out; their
        replies. Raises RedisTrouble if Redis failed or any reply is an error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append(_Call(add, future))
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        replies = await future
        for reply in replies:
            if isinstance(reply, Exception):
                raise RedisTrouble(f"{type(reply).__name__}: {reply}")
        return replies

    def _flush(self) -> None:
        self._flush_due = False
        # A call whose caller was cancelled meanwhile is not sent: an election nobody
        # waits for would leave a lease that no leader releases.
        queue = [call for call in self._queue if not call.future.done()]
        loop = asyncio.get_running_loop()
        while queue and self._free > 0:
            batch, queue = queue[:BATCH], queue[BATCH:]
            self._free -= 1
            task = loop.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queue = queue

    async def _send(self, batch: list[_Call]) -> None:
        try:
            try:
                with _trouble():
                    replies = await self._timed(self._pipelined(batch))
                    if any(isinstance(r, redis.exceptions.NoScriptError) for some in replies for r in some):
                        # A Redis restarted or flushed since: load the scripts, once more.
                        for script in (self._acquire, self._append):
                            await self._timed(self._commands.script_load(script.script))
                        replies = await self._timed(self._pipelined(batch))
                self._answered()
            except RedisTrouble as trouble:
                failed = batch
                if self._silent(trouble):
                    # Redis said nothing for a whole timeout: what queued behind this
                    # pipeline would go to the same silent Redis, a timeout per pipeline
                    # (a burst of thousands, dozens in a row). It fails now, as a flight
                    # that comes after would skip Redis (the backend's breaker).
                    failed = [*batch, *self._queue]
                    self._queue = []
                for call in failed:
                    _fail(call.future, trouble)
            else:
                for call, reply in zip(batch, replies, strict=True):
                    if not call.future.done():
                        call.future.set_result(reply)
        finally:
            self._free += 1
            if self._queue and not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush)
            # Nobody is left waiting, even if this task was cancelled (closing).
            for call in batch:
                _fail(call.future, RedisTrouble("the backend is closed"))

    def _silent(self, trouble: RedisTrouble) -> bool:
        """Whether *trouble* says Redis was silent, not that this loop was too busy to
        hear it (then what queued may still be heard: it goes in the next pipeline)."""
        if self._timeout is None:
            # The client's own socket timeouts: they cannot tell.
            return isinstance(trouble.__cause__, redis.exceptions.TimeoutError)
        return isinstance(trouble.__cause__, Silent)

    async def _pipelined(self, batch: list[_Call]) -> list[list[Any]]:
        pipe = self._commands.pipeline(transaction=False)
        counts = [call.add(pipe) for call in batch]
        flat = list(await pipe.execute(raise_on_error=False))
        replies: list[list[Any]] = []
        start = 0
        for count in counts:
            replies.append(flat[start : start + count])
            start += count
        return replies

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._cluster:
            async with self._gated():
                reply = await self._timed(script(keys=keys, args=args))
            self._answered()
            return reply

        def add(pipe: Any) -> int:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            return 1

        (reply,) = await self._run(add)
        return reply

    async def acquire(self, lease: Lease, lease_ms: int) -> str | None:
        reply = await self._script(self._acquire, [lease.key, lease.round], [lease.token, lease_ms])
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
        reply = await self._script(self._append, [lease.key, lease.stream, lease.round], args)
        return _appended(reply)

    async def read(self, lease_key: str, stream: str, after: bytes, block: float | None) -> Read:
        if block is not None:
            entries, lease = await self._reader(stream).read(stream, lease_key, after, block)
            return Read(entries, _lease_value(lease))

        def add(pipe: Any) -> int:
            pipe.xread({stream: after}, count=READ_COUNT)
            pipe.get(lease_key)
            return 2

        try:
            if self._cluster:
                async with self._gated():
                    pipe = self._commands.pipeline(transaction=False)
                    add(pipe)
                    entries, lease = await self._timed(pipe.execute())
            else:
                entries, lease = await self._run(add)
        except RedisTrouble as trouble:
            await refresh_slots(self._commands, trouble.__cause__)
            raise
        return Read(_entries(entries), _lease_value(lease))

    async def _wake(self, streams: Streams) -> None:
        try:
            if self._cluster:
                async with self._gated():
                    pipe = self._commands.pipeline(transaction=False)
                    wake_commands(pipe, streams)
                    await self._timed(pipe.execute())
            else:
                await self._run(partial(wake_commands, streams=streams))
        except RedisTrouble as trouble:
            await refresh_slots(self._commands, trouble.__cause__)
            raise

    def _reader(self, stream: str) -> AsyncioReader:
        tag = tag_of(stream) if self._cluster else "{hc}"
        reader = self._readers.get(tag)
        if reader is None:
            streams = Streams(tag, self._prefix, self.block, self._cluster)
            reader = self._readers[tag] = AsyncioReader(
                streams, self._reads, self._wake, self._timed_read, self._watch, self.block
            )
        return reader

    def following(self) -> int:
        """Followers of this loop waiting in a blocking read (for tests and diagnostics)."""
        return sum(reader.waiting for reader in self._readers.values())

    async def window_get(self, key: str) -> bytes | None:
        if self._cluster:
            async with self._gated():
                return _window_value(await self._timed(self._commands.get(key)))

        def add(pipe: Any) -> int:
            pipe.get(key)
            return 1

        (value,) = await self._run(add)
        return _window_value(value)

    async def window_put(self, key: str, value: bytes, ttl_ms: int) -> None:
        if self._cluster:
            async with self._gated():
                await self._timed(self._commands.set(key, value, px=ttl_ms))
            return

        def add(pipe: Any) -> int:
            pipe.set(key, value, px=ttl_ms)
            return 1

        await self._run(add)

    async def aclose(self) -> None:
        for reader in list(self._readers.values()):
            await reader.aclose()
        with contextlib.suppress(Exception):
            await self._commands.aclose()
        if self._reads is not self._commands:
            with contextlib.suppress(Exception):
                await self._reads.aclose()


def _fail(future: asyncio.Future[list[Any]], trouble: RedisTrouble) -> None:
    if not future.done():
        # One exception each: raised in many tasks, a shared one would gather them all
        # in its traceback.
        error = RedisTrouble(str(trouble))
        # What Redis's client raised, as the trouble's own cause: telemetry names it.
        error.__cause__ = trouble.__cause__ or trouble
        future.set_exception(error)


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
