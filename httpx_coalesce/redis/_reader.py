"""One blocking reader per bucket for all the followers of a process.

A follower waits for its leader's next records with a blocking ``XREAD``. Given a
connection each, a burst of distinct flights would open one connection per flight and
process (thousands, each with a short connect timeout: the storm that made a burst fail
open). Here the followers of one process (per event loop, or per backend for threads)
hand their reads to a reader that sends one ``XREAD BLOCK`` over all their streams and a
``MGET`` of their leases, on one connection, and hands each follower its entries.

On Redis Cluster a multi-key command must stay within one slot, so there is a reader per
bucket (the flights' hash tag, see ``_names``): at most ``BUCKETS`` blocked connections.

A stream joining while the reader is blocked wakes it with a one-entry write to the
reader's own wake stream, which every ``XREAD`` of that reader includes. After it hands
out a stream's entries the reader keeps reading that stream ahead for a while, so a
follower that comes back for more finds it already read or being read, without a wake.

``Streams`` holds that state and decides; ``ThreadReader`` and ``AsyncioReader`` drive it
with a thread or an asyncio task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio.cluster
import redis.cluster
import redis.exceptions

from ._errors import Garbage, RedisTrouble
from ._names import new_token
from ._patience import LoopWatch, patiently
from ._records import END, ERROR, TOO_LARGE

__all__ = [
    "AsyncioReader",
    "Cycle",
    "Streams",
    "ThreadReader",
    "Want",
    "parse_entries",
    "parse_streams",
    "refresh_slots",
    "refresh_slots_sync",
    "wake_commands",
]

#: (stream entry id, record type, record data)
Entry = tuple[bytes, bytes, bytes]

#: Entries one read returns at most, per stream.
READ_COUNT = 256

#: Seconds a stream is read ahead after its follower last took entries.
LINGER = 1.0

#: Record types that end a round for good (see ``_records``).
_ENDS = frozenset((END, ERROR, TOO_LARGE))

#: The field of a wake stream's entries (a flight's records have ``t`` and ``d``).
WAKE_FIELD = b"w"

#: Seconds a wake stream lives unread (a reader that died leaves nothing for long).
WAKE_TTL_MS = 10_000


@dataclass(eq=False)
class Want:
    """One follower's read: it is answered with entries, or with none at its deadline."""

    stream: str
    lease_key: str
    after: bytes
    deadline: float
    entries: list[Entry] | None = None
    lease: bytes | None = None
    error: RedisTrouble | None = None
    #: Set by the driver when answered (a threading.Event or an asyncio.Future).
    signal: Any = None

    @property
    def answered(self) -> bool:
        return self.entries is not None or self.error is not None


@dataclass(eq=False)
class _Stream:
    #: The buffer holds the entries after ``base`` up to ``cursor``, read ahead.
    base: bytes
    cursor: bytes
    buffer: list[Entry] = field(default_factory=list)
    lease: bytes | None = None
    wants: list[Want] = field(default_factory=list)
    #: Read ahead until then, with no follower waiting.
    linger_until: float = 0.0

    def take(self) -> tuple[list[Entry], bytes | None]:
        entries, self.buffer = self.buffer, []
        self.base = self.cursor
        return entries, self.lease

    def handed_out(self, entries: list[Entry], now: float) -> None:
        """Read ahead for a while, unless *entries* ended the round: nothing more will
        come that its follower needs (an aborted round may still get a successor's
        pointer, so it is read on)."""
        self.linger_until = 0.0 if entries and entries[-1][1] in _ENDS else now + LINGER


@dataclass(frozen=True, slots=True)
class Cycle:
    """One blocking read to send: streams and their cursors (the wake stream first)."""

    streams: dict[str, bytes]
    leases: list[str]
    block_ms: int
    #: On a Redis Cluster (its pipelines take single-key commands only).
    cluster: bool


class Streams:
    """What one reader reads, and for whom."""

    def __init__(self, tag: str, prefix: str, longest: float, cluster: bool = False) -> None:
        self._cluster = cluster
        self.wake_key = f"{prefix}wake:{tag}:{new_token()}"
        #: When the wake stream's expiry is next pushed back (monotonic seconds).
        self.wake_expiry_renewal = 0.0
        self._wake_cursor = b"0-0"
        self._longest = longest
        self._streams: dict[str, _Stream] = {}
        #: Streams (and cursors) of the read in flight; None while none is.
        self._in_flight: dict[str, bytes] | None = None
        self._cycle_end = 0.0
        #: A wake was asked for the read in flight: the next read takes every stream
        #: that joined since, so one wake serves them all (a burst of followers would
        #: otherwise send one write each).
        self._woken = False

    @property
    def idle(self) -> bool:
        return not self._streams

    @property
    def waiting(self) -> int:
        """Followers waiting for this reader's next read."""
        return sum(len(stream.wants) for stream in self._streams.values())

    def add(self, want: Want) -> bool:
        """Take *want* (answered at once if read ahead); True if the reader must be woken."""
        stream = self._streams.get(want.stream)
        if stream is None:
            stream = self._streams[want.stream] = _Stream(want.after, want.after)
        elif want.after == stream.base and stream.buffer:
            want.entries, want.lease = stream.take()
            stream.handed_out(want.entries, time.monotonic())
            return False
        elif want.after == stream.cursor:
            stream.buffer.clear()
            stream.base = stream.cursor
        elif want.after != stream.base:
            # The follower asks from elsewhere (it starts over): read from there.
            stream.buffer.clear()
            stream.base = stream.cursor = want.after
        stream.wants.append(want)
        in_flight = self._in_flight
        if self._woken or in_flight is None:
            return False
        self._woken = in_flight.get(want.stream) != stream.cursor or want.deadline < self._cycle_end
        return self._woken

    def drop(self, want: Want) -> None:
        """A follower stopped waiting (cancelled): its stream may linger, then go."""
        stream = self._streams.get(want.stream)
        if stream is not None and want in stream.wants:
            stream.wants.remove(want)
            stream.linger_until = time.monotonic() + LINGER

    def next_cycle(self) -> Cycle | None:
        """The next read, or None while there is nothing to read."""
        now = time.monotonic()
        for name in [n for n, s in self._streams.items() if not s.wants and s.linger_until <= now]:
            del self._streams[name]
        if not self._streams:
            self._in_flight = None
            return None
        streams = {self.wake_key: self._wake_cursor}
        leases: list[str] = []
        until = now + self._longest
        for name, stream in self._streams.items():
            streams[name] = stream.cursor
            for want in stream.wants:
                leases.append(want.lease_key)
                until = min(until, want.deadline)
            if not stream.wants:
                until = min(until, stream.linger_until)
        self._in_flight = streams
        self._woken = False
        self._cycle_end = until
        block = max(0.001, until - now)
        return Cycle(streams, list(dict.fromkeys(leases)), max(1, round(block * 1000)), self._cluster)

    def settle(self, cycle: Cycle, read: dict[bytes, list[Entry]], leases: list[Any]) -> list[Want]:
        """Take a cycle's answer; the wants it answered."""
        self._in_flight = None
        values = dict(zip(cycle.leases, leases, strict=True))
        wake = read.pop(self.wake_key.encode(), None)
        if wake:
            self._wake_cursor = wake[-1][0]
        now = time.monotonic()
        answered: list[Want] = []
        for name, stream in self._streams.items():
            entries = read.get(name.encode())
            if entries:
                stream.buffer.extend(entries)
                stream.cursor = entries[-1][0]
            for want in stream.wants:
                if want.lease_key in values:
                    lease = values[want.lease_key]
                    if lease is not None and not isinstance(lease, bytes):
                        raise Garbage(f"unexpected lease value: {lease!r:.100}")
                    stream.lease = lease
            if not stream.wants:
                continue
            if stream.buffer:
                # One follower per stream and process as a rule (local coalescing); any
                # other gets the same entries.
                entries, lease = stream.take()
                for want in stream.wants:
                    want.entries, want.lease = entries, lease
                answered.extend(stream.wants)
                stream.wants.clear()
                stream.handed_out(entries, now)
            else:
                # A want that joined during this read has no lease value from it: it
                # waits for the next read, which is due at once.
                due = [want for want in stream.wants if want.deadline <= now and want.lease_key in values]
                for want in due:
                    want.entries, want.lease = [], values.get(want.lease_key)
                    stream.wants.remove(want)
                answered.extend(due)
                if not stream.wants:
                    stream.linger_until = now + LINGER
        return answered

    def fail(self, trouble: RedisTrouble) -> list[Want]:
        """The read failed: every waiting follower hears it, and reading starts afresh."""
        self._in_flight = None
        failed = [want for stream in self._streams.values() for want in stream.wants]
        for want in failed:
            want.error = trouble
        self._streams.clear()
        return failed


def parse_streams(reply: Any) -> dict[bytes, list[Entry]]:
    """An XREAD reply of many streams (RESP2 or RESP3 shape), by stream name."""
    if not reply:
        return {}
    if isinstance(reply, dict):
        pairs = list(reply.items())
    elif isinstance(reply, list) and all(isinstance(item, list | tuple) and len(item) == 2 for item in reply):
        pairs = [(item[0], item[1]) for item in reply]
    else:
        raise Garbage(f"unexpected stream read: {reply!r:.100}")
    streams: dict[bytes, list[Entry]] = {}
    for name, items in pairs:
        if isinstance(name, str):
            name = name.encode()
        streams[name] = parse_entries(items, wakes=True)
    return streams


def parse_entries(items: Any, wakes: bool = False) -> list[Entry]:
    """One stream's entries as (id, record type, data); with *wakes*, a wake stream's
    entries too (type ``WAKE_FIELD``). Anything else is Garbage."""
    entries: list[Entry] = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise Garbage(f"unexpected stream entry: {item!r:.100}")
        entry_id, fields = item
        if not isinstance(entry_id, bytes) or not isinstance(fields, dict):
            raise Garbage(f"unexpected stream entry: {item!r:.100}")
        kind, data = fields.get(b"t"), fields.get(b"d")
        if wakes and kind is None and data is None and WAKE_FIELD in fields:
            # A wake stream's entry: only its id counts.
            kind, data = WAKE_FIELD, b""
        if not isinstance(kind, bytes) or not isinstance(data, bytes):
            raise Garbage(f"unexpected stream entry: {item!r:.100}")
        entries.append((entry_id, kind, data))
    return entries


@contextlib.contextmanager
def _trouble() -> Any:
    try:
        yield
    except RedisTrouble:
        raise
    except Exception as error:
        raise RedisTrouble(f"{type(error).__name__}: {error}") from error


#: What a cluster node that failed, or a slot that moved, raises in a pipeline.
_MOVED_ON = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
)


def refresh_slots_sync(client: Any, failure: BaseException | None) -> None:
    """After a Redis Cluster pipeline failed on a node: look the cluster up again.

    redis-py (8.x) finds the keys of an ``XREAD`` by asking one node (``COMMAND
    GETKEYS`` to the client's default node, the first master it saw), before any
    routing. When that node dies, the error comes from there, where nothing marks the
    client for a new look at the cluster, as a failed command or a pipeline that
    cannot connect would: a client that only sends pipelines of ``XREAD`` (the
    readers') would dial the dead node forever, and never find the replica promoted in
    its place. A new look also picks a live default node.
    """
    if not isinstance(client, redis.cluster.RedisCluster) or not isinstance(failure, _MOVED_ON):
        return
    with contextlib.suppress(Exception):
        # Nothing reachable yet (mid-failover): the next failure looks again.
        client.nodes_manager.initialize()


async def refresh_slots(client: Any, failure: BaseException | None) -> None:
    """``refresh_slots_sync`` for an asyncio cluster client.

    Its pipeline, with retries off, does not look the cluster up again after any
    error; and it asks its command parser's own node (the default one when the client
    started) for the keys of an ``XREAD``: both are renewed here, as the client's own
    start does, without closing the connections to the other nodes (concurrent
    look-ups share one: redis-py counts them by epoch).
    """
    if not isinstance(client, redis.asyncio.cluster.RedisCluster) or not isinstance(failure, _MOVED_ON):
        return
    with contextlib.suppress(Exception):
        nodes = client.nodes_manager
        await nodes.initialize()
        parser = client.commands_parser
        node = getattr(parser, "node", None)
        if node is None or node.name not in nodes.nodes_cache:
            await parser.initialize(nodes.default_node)


def _cycle_pipeline(client: Any, cycle: Cycle) -> Any:
    """One cycle's read and its leases, in one round trip: the GETs run after the read
    returns, so each follower gets its lease as it is after the wait."""
    pipe = client.pipeline(transaction=False)
    pipe.xread(cycle.streams, count=READ_COUNT, block=cycle.block_ms)
    if cycle.leases and cycle.cluster:
        # A cluster pipeline refuses MGET, even within one slot: one GET each.
        for lease in cycle.leases:
            pipe.get(lease)
    elif cycle.leases:
        pipe.mget(cycle.leases)
    return pipe


def _leases(replies: list[Any], cycle: Cycle) -> list[Any]:
    if not cycle.leases:
        return []
    if cycle.cluster:
        return list(replies[1:])
    leases = replies[1]
    if not isinstance(leases, list) or len(leases) != len(cycle.leases):
        raise Garbage(f"unexpected lease values: {leases!r:.100}")
    return leases


def wake_commands(pipe: Any, streams: Streams) -> int:
    """Put the write that wakes a reader on *pipe*: one entry in its wake stream, whose
    expiry is pushed back only now and then (a wake is one command, and the key still
    goes within WAKE_TTL_MS of the reader's end). Returns how many commands it put."""
    pipe.xadd(streams.wake_key, {WAKE_FIELD: b"1"}, maxlen=1, approximate=False)
    now = time.monotonic()
    if now >= streams.wake_expiry_renewal:
        streams.wake_expiry_renewal = now + WAKE_TTL_MS / 2000
        pipe.pexpire(streams.wake_key, WAKE_TTL_MS)
        return 2
    return 1


class ThreadReader:
    """A reader thread for the sync clients (threads, trio, the no-asyncio-client case)."""

    def __init__(self, streams: Streams, reads: Any, wake: Callable[[Streams], None], longest: float) -> None:
        self._streams = streams
        self._reads = reads
        #: Sends the wake write (on a command connection: the read one is blocked).
        self._send_wake = wake
        self._longest = longest
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def read(
        self, stream: str, lease_key: str, after: bytes, block: float
    ) -> tuple[list[Entry], bytes | None]:
        want = Want(stream, lease_key, after, time.monotonic() + block)
        with self._condition:
            if self._closed:
                raise RedisTrouble("the backend is closed")
            wake = self._streams.add(want)
            if want.answered:
                assert want.entries is not None
                return want.entries, want.lease
            self._ensure_thread()
            self._condition.notify_all()
        if wake:
            try:
                self._send_wake(self._streams)
            except RedisTrouble:
                with self._condition:
                    self._streams.drop(want)
                raise
        with self._condition:
            # The reader answers by the deadline; past it plus a socket timeout it failed.
            limit = block + self._longest + 5.0
            if not self._condition.wait_for(lambda: want.answered, limit):
                self._streams.drop(want)
                raise RedisTrouble("the stream reader did not answer")
        if want.error is not None:
            raise want.error
        assert want.entries is not None
        return want.entries, want.lease

    def _ensure_thread(self) -> None:
        # A forked child inherits the thread object but not the thread.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="httpx-coalesce-redis-reader", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._condition:
                cycle = self._streams.next_cycle()
                while cycle is None and not self._closed:
                    self._condition.wait()
                    cycle = self._streams.next_cycle()
                if self._closed or cycle is None:
                    return
            try:
                with _trouble():
                    pipe = _cycle_pipeline(self._reads, cycle)
                    replies = pipe.execute()
                with self._condition:
                    self._streams.settle(cycle, parse_streams(replies[0]), _leases(replies, cycle))
                    self._condition.notify_all()
            except Exception as error:
                # Redis trouble, or a bug here: either way no follower is left waiting.
                trouble = error if isinstance(error, RedisTrouble) else RedisTrouble(repr(error))
                with self._condition:
                    self._streams.fail(trouble)
                    self._condition.notify_all()
                # After the followers have their answer: they pause before reading again.
                refresh_slots_sync(self._reads, trouble.__cause__)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._streams.fail(RedisTrouble("the backend is closed"))
            self._condition.notify_all()


async def _answered(signal: asyncio.Future[None]) -> None:
    await asyncio.shield(signal)


class AsyncioReader:
    """A reader task for one asyncio event loop's clients."""

    def __init__(
        self,
        streams: Streams,
        reads: Any,
        wake: Callable[[Streams], Awaitable[None]],
        timed: Callable[[Coroutine[Any, Any, Any], float], Awaitable[Any]],
        watch: LoopWatch,
        longest: float,
    ) -> None:
        self._watch = watch
        self._patience = longest + 5.0
        self._streams = streams
        self._reads = reads
        #: Sends the wake write (through the command pipeline: the read connection is blocked).
        self._send_wake = wake
        #: Runs a read that blocks up to the given seconds, within its timeout.
        self._timed = timed
        self._task: asyncio.Task[None] | None = None
        self._work = asyncio.Event()
        self._closed = False

    async def read(
        self, stream: str, lease_key: str, after: bytes, block: float
    ) -> tuple[list[Entry], bytes | None]:
        if self._closed:
            raise RedisTrouble("the backend is closed")
        want = Want(stream, lease_key, after, time.monotonic() + block)
        wake = self._streams.add(want)
        if want.answered:
            assert want.entries is not None
            return want.entries, want.lease
        want.signal = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._work.set()
        try:
            if wake:
                await self._send_wake(self._streams)
            # The reader answers by the deadline; well past it (in time the loop was free
            # to hear it), something is wrong.
            limit = block + self._patience
            await patiently(_answered(want.signal), limit, 2 * limit, self._watch)
        except redis.exceptions.TimeoutError:
            self._streams.drop(want)
            raise RedisTrouble("the stream reader did not answer") from None
        except BaseException:
            self._streams.drop(want)
            raise
        if want.error is not None:
            raise want.error
        assert want.entries is not None
        return want.entries, want.lease

    @property
    def waiting(self) -> int:
        return self._streams.waiting

    async def _run(self) -> None:
        while not self._closed:
            cycle = self._streams.next_cycle()
            if cycle is None:
                self._work.clear()
                await self._work.wait()
                continue
            failure: BaseException | None = None
            try:
                with _trouble():
                    pipe = _cycle_pipeline(self._reads, cycle)
                    replies = await self._timed(pipe.execute(), cycle.block_ms / 1000)
                answered = self._streams.settle(cycle, parse_streams(replies[0]), _leases(replies, cycle))
            except RedisTrouble as trouble:
                failure = trouble.__cause__
                answered = self._streams.fail(trouble)
            except Exception as error:
                # A bug here must not strand followers: they hear it as Redis trouble.
                answered = self._streams.fail(RedisTrouble(f"{type(error).__name__}: {error}"))
            for want in answered:
                if want.signal is not None and not want.signal.done():
                    want.signal.set_result(None)
            if failure is not None:
                # After the followers have their answer: they pause before reading again.
                await refresh_slots(self._reads, failure)

    async def aclose(self) -> None:
        self._closed = True
        self._work.set()
        task, self._task = self._task, None
        if task is not None:
            # redis-py may absorb the cancellation of a blocked read (it only drops the
            # connection): the closed flag ends the loop then, and closing is not held
            # up by a read that has up to a heartbeat to run.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        for want in self._streams.fail(RedisTrouble("the backend is closed")):
            if want.signal is not None and not want.signal.done():
                want.signal.set_result(None)
