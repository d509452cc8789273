"""A follower's side: read another process's round from its Redis stream.

A follower reads from the start of the round's stream and blocks for more. Until it
hands a response to the local flight it can still change course: if the leader dies
or gives up, it takes part in a new election; if the body is too large, or Redis
fails, or the leader is silent too long, it sends the request itself. Once handed out
(a live response, after its head), any such trouble reaches the readers as the client
library's ReadError (ReadTimeout for silence), since bytes may already be with them.

A buffered response (bounded, known length) is handed out only once complete, as the
local flight would, so a follower of one never has to fail a reader.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from .._library import Library
from .._replay import Head
from .._upstream import is_buffered
from ._context import Context
from ._errors import Garbage, RedisTrouble
from ._names import is_token, new_token
from ._ops import AsyncOps, Entry, Lease, Read, SyncOps
from ._records import (
    ABORT,
    CHUNK,
    END,
    ERROR,
    HEAD,
    MOVED,
    PRESENCE,
    TOO_LARGE,
    UpstreamFailure,
    decode_chunk,
    decode_error,
    decode_head,
)

__all__ = ["Moved", "Presence", "Verdict", "follow_async", "follow_sync", "response_of", "watch_key"]

logger = logging.getLogger("httpx_coalesce.redis")


def watch_key(lease: Lease) -> str:
    """The key that says some process still follows the round of *lease*.

    Named beside the round's stream, in the same hash slot (the request key's tag).
    """
    head, _, tail = lease.stream.rpartition("stream:{")
    return f"{head}watch:{{{tail}"


class Presence:
    """A follower process tells the round's leader it still waits for the answer.

    A leader whose own callers have all left keeps its upstream call going only while
    some process follows it. It asks with a ``PRESENCE`` record; from then on each
    follower takes the round's watch key if it is free (a lease of its own, so it
    lapses if the process dies) and renews it while it waits or reads; leaving, it
    deletes the key if it holds it, and any other follower takes it at its next look.
    Until asked, followers send nothing for it: most leaders keep their callers.
    Failures here are ignored: the follower's reads meet the same Redis and deal with
    it.
    """

    __slots__ = ("_context", "_last", "_lease", "_mine")

    def __init__(self, context: Context, round_lease: Lease) -> None:
        self._context = context
        watch = watch_key(round_lease)
        # A lease of its own and nothing more: the watch key is its own round.
        self._lease = Lease(watch, round_lease.stream, new_token(), watch)
        self._mine = False
        self._last = -float("inf")

    def _due(self) -> bool:
        # Twice per heartbeat, between blocked reads of up to a heartbeat: a key left by
        # another follower is taken again within a heartbeat and a Redis timer tick,
        # inside the two heartbeats a leader waits before it believes nobody follows.
        now = time.monotonic()
        if now - self._last < self._context.settings.interval / 2:
            return False
        self._last = now
        return True

    async def keep_async(self, ops: AsyncOps) -> None:
        if not self._due():
            return
        settings = self._context.settings
        try:
            if self._mine:
                self._mine = await ops.append(
                    self._lease, (), settings.lease_ms, settings.stream_ttl_ms, final=False
                )
            if not self._mine:
                self._mine = await ops.acquire(self._lease, settings.lease_ms) is None
        except RedisTrouble as trouble:
            logger.debug("could not say this process follows: %s", trouble)

    def keep_sync(self, ops: SyncOps) -> None:
        if not self._due():
            return
        settings = self._context.settings
        try:
            if self._mine:
                self._mine = ops.append(self._lease, (), settings.lease_ms, settings.stream_ttl_ms, False)
            if not self._mine:
                self._mine = ops.acquire(self._lease, settings.lease_ms) is None
        except RedisTrouble as trouble:
            logger.debug("could not say this process follows: %s", trouble)

    async def leave_async(self, ops: AsyncOps) -> None:
        if not self._mine:
            return
        self._mine = False
        settings = self._context.settings
        with anyio.CancelScope(shield=True), contextlib.suppress(RedisTrouble):
            await ops.append(self._lease, (), settings.lease_ms, settings.stream_ttl_ms, True)

    def leave_sync(self, ops: SyncOps) -> None:
        if not self._mine:
            return
        self._mine = False
        settings = self._context.settings
        with contextlib.suppress(RedisTrouble):
            ops.append(self._lease, (), settings.lease_ms, settings.stream_ttl_ms, True)


class Verdict(enum.Enum):
    """What a follower that hands out nothing tells the election loop."""

    #: Send the request yourself (Redis trouble, body too large, leader too slow).
    ALONE = "alone"
    #: The leader stopped before the end: take part in a new election.
    REELECT = "reelect"


class Stop(enum.Enum):
    """How a round ended without a complete response or an upstream error."""

    TOO_LARGE = "the shared response passed the body size limit"
    ABORTED = "the leading process stopped the shared response before its end"
    VANISHED = "the leading process went away before the end of the shared response"
    LOST = "Redis lost part of the shared response and its leader could not write it again"


@dataclass(frozen=True, slots=True)
class Moved:
    """The round stopped early and a successor leads a new one: follow that instead."""

    token: str


class _Ended:
    __slots__ = ()


ENDED = _Ended()

Outcome = _Ended | UpstreamFailure | Stop | Moved


#: Heartbeats a follower waits for a vanished lease to come back: a leader takes its
#: lease again at its keeper's next tick once Redis answers (after a restart, a
#: failover or an eviction lost it), within a heartbeat and a round trip, or a tenth
#: of a second once its keeper saw Redis fail.
_REACQUIRE_GRACE = 2.0

#: The first pause before a follower reads again after Redis failed; it doubles up to
#: half a heartbeat, so a refused connection does not spin.
_FIRST_PAUSE = 0.02


class Reading:
    """What a follower has read of a round so far."""

    def __init__(self, lease: Lease, wait_limit: float | None, context: Context) -> None:
        self.lease = lease
        self._token = lease.token.encode()
        self._wait_limit = wait_limit
        self._context = context
        self.after = b"0-0"
        self.head: Head | None = None
        self.chunks: deque[bytes] = deque()
        #: Body bytes read so far (handed out or waiting in ``chunks``).
        self._received = 0
        self.outcome: Outcome | None = None
        #: The leader asked its followers to mark their presence (``Presence``).
        self.presence_wanted = False
        self._progress_at = time.monotonic()
        self._missing_since: float | None = None
        self._trouble_since: float | None = None
        self._pause = _FIRST_PAUSE

    def feed(self, entries: list[Entry]) -> None:
        for entry_id, kind, data in entries:
            self.after = entry_id
            if kind == PRESENCE:
                self.presence_wanted = True
            elif kind == MOVED:
                # The stream of an aborted round, or of a vanished one (no final record).
                if self.outcome not in (None, Stop.ABORTED) or not is_token(data):
                    raise Garbage("a misplaced successor record")
                self.outcome = Moved(data.decode())
            elif self.outcome is not None:
                # The round written again after Redis lost part of it: read already.
                continue
            elif kind == HEAD:
                head = decode_head(data)
                # A second head starts the round written again: the same response.
                if self.head is None:
                    self.head = head
            elif kind == CHUNK:
                if self.head is None:
                    raise Garbage("a body chunk before the head")
                self._take(*decode_chunk(data))
            elif kind == END:
                if self.head is None or data != b"%d" % self._received:
                    raise Garbage("an end that does not match the body")
                self.outcome = ENDED
            elif kind == ERROR:
                self.outcome = decode_error(data)
            elif kind == TOO_LARGE:
                self.outcome = Stop.TOO_LARGE
            elif kind == ABORT:
                self.outcome = Stop.ABORTED
            else:
                raise Garbage(f"a record of unknown type {kind!r:.20}")
        self._progress_at = time.monotonic()

    def _take(self, offset: int, data: bytes) -> None:
        """Keep the bytes of a chunk this reader does not have yet."""
        if offset > self._received:
            # Redis lost chunks and the leader did not write them again.
            logger.debug(
                "a gap in %s: a chunk at %d after %d bytes", self.lease.stream, offset, self._received
            )
            self.outcome = Stop.LOST
            return
        fresh = data[self._received - offset :]
        if fresh:
            self.chunks.append(fresh)
            self._received += len(fresh)

    def block(self, longest: float) -> float:
        """How long the next read may block: up to the wait limit, if nearer."""
        if self._wait_limit is None:
            return longest
        return max(0.001, min(longest, self._progress_at + self._wait_limit - time.monotonic()))

    @property
    def waited_too_long(self) -> bool:
        return self._wait_limit is not None and time.monotonic() - self._progress_at >= self._wait_limit

    def took(self, read: Read) -> bool:
        """Take a blocking read's entries; True if the leader looks gone (confirm it)."""
        self._trouble_since = None
        self._pause = _FIRST_PAUSE
        if read.entries:
            self.feed(read.entries)
        if read.lease == self._token:
            self._missing_since = None
            return False
        if read.entries:
            return False
        if read.lease is None:
            # Gone, or lost by Redis: its leader takes it again if it lives.
            now = time.monotonic()
            if self._missing_since is None:
                self._missing_since = now
                # Read the round from its start again: if Redis lost the stream, the
                # rewritten one may have entry ids below the last one read here.
                self.after = b"0-0"
                return False
            if now - self._missing_since < _REACQUIRE_GRACE * self._context.settings.interval:
                return False
        return True

    def confirm(self, read: Read) -> None:
        """Take a second look after the lease was seen gone.

        The last record and the lease's release are one step, so a leader that ended
        well left its final record by the time its lease is gone.
        """
        if read.entries:
            self.feed(read.entries)
        else:
            self.outcome = Stop.VANISHED

    def troubled(self, trouble: RedisTrouble, handed_out: bool) -> float:
        """Redis failed: how long to pause before reading again.

        Raises *trouble* once it has lasted longer than this follower rides it out: a
        follower that has handed out nothing waits two leases, then sends its own
        call; one that has, waits as long as a stream lives. Either way within its own
        wait limit (see ``waited_too_long``).
        """
        now = time.monotonic()
        settings = self._context.settings
        if self._trouble_since is None:
            self._trouble_since = now
            # Counted and logged once per episode; the breaker keeps new flights away.
            self._context.report(trouble)
        patience = settings.stream_ttl if handed_out else 2 * settings.lease
        if now - self._trouble_since >= patience:
            raise trouble
        pause, self._pause = self._pause, min(self._pause * 2, settings.interval / 2)
        return pause

    def report(self, trouble: RedisTrouble) -> None:
        """Report trouble that ends the following, unless its episode was reported."""
        if self._trouble_since is None:
            self._context.report(trouble)

    def ready(self, method: str, context: Context) -> bool:
        """Whether to stop waiting: the round is over, or a live response can go out."""
        if self.outcome is not None:
            return True
        return self.head is not None and not is_buffered(self.head, method, context.limits)


# One wait for news of the round, in each face: first, if the leader asked, say this
# process still follows it (see Presence).


async def _advance_async(reading: Reading, presence: Presence, ops: AsyncOps, handed_out: bool) -> None:
    if reading.presence_wanted:
        await presence.keep_async(ops)
    lease = reading.lease
    try:
        if reading.took(await ops.read(lease.round, lease.stream, reading.after, reading.block(ops.block))):
            reading.confirm(await ops.read(lease.round, lease.stream, reading.after, None))
    except Garbage:
        raise
    except RedisTrouble as trouble:
        await anyio.sleep(reading.troubled(trouble, handed_out))


def _advance_sync(reading: Reading, presence: Presence, ops: SyncOps, handed_out: bool) -> None:
    if reading.presence_wanted:
        presence.keep_sync(ops)
    lease = reading.lease
    try:
        if reading.took(ops.read(lease.round, lease.stream, reading.after, reading.block(ops.block))):
            reading.confirm(ops.read(lease.round, lease.stream, reading.after, None))
    except Garbage:
        raise
    except RedisTrouble as trouble:
        time.sleep(reading.troubled(trouble, handed_out))


class _Follower:
    """One follower's response as it reaches the caller's library."""

    def __init__(
        self, context: Context, reading: Reading, request: Any, library: Library, presence: Presence
    ) -> None:
        self.context = context
        self.reading = reading
        self.request = request
        self.library = library
        self.presence = presence

    def error(self, outcome: Outcome) -> BaseException:
        module = self.library.module
        if isinstance(outcome, UpstreamFailure):
            # The leader's error class, from this caller's library: an SDK retrying on
            # ConnectError or ReadTimeout must see the same class as the leader did.
            cls: Any = getattr(module, outcome.name, None)
            if not (isinstance(cls, type) and issubclass(cls, self.library.RequestError)):
                cls = module.TransportError
            error: BaseException = cls(outcome.message, request=self.request)
            return error
        message = outcome.value if isinstance(outcome, Stop) else Stop.VANISHED.value
        error = module.ReadError(message, request=self.request)
        return error

    def timeout(self) -> BaseException:
        error: BaseException = self.library.module.ReadTimeout(
            "no news of the shared response within the follower wait limit", request=self.request
        )
        return error

    def lost_redis(self, trouble: RedisTrouble) -> BaseException:
        self.reading.report(trouble)
        error: BaseException = self.library.module.ReadError(
            f"lost the shared response: Redis failed ({trouble})", request=self.request
        )
        return error

    def complete(self) -> bool:
        """Whether the whole body has been read (its readers have it once the chunks
        read are handed out); raises what they get instead if the round failed or
        went silent."""
        outcome = self.reading.outcome
        if outcome is ENDED:
            return True
        if outcome is not None:
            raise self.error(outcome)
        if self.reading.waited_too_long:
            raise self.timeout()
        return False

    def settle(self, is_async: bool, ops: AsyncOps | SyncOps) -> Any:
        """The response to hand out, or what the election loop should do instead."""
        reading = self.reading
        outcome = reading.outcome
        if isinstance(outcome, UpstreamFailure):
            self.context.counters.add("redis_followed")
            raise self.error(outcome)
        if outcome is Stop.TOO_LARGE:
            return Verdict.ALONE
        if isinstance(outcome, Moved):
            return outcome
        if outcome is not None and outcome is not ENDED:
            return Verdict.REELECT
        head = reading.head
        assert head is not None
        library = self.library
        if outcome is ENDED:
            stream: Any = library.module.ByteStream(b"".join(reading.chunks))
        elif is_async:
            stream = library.stream_class(_AsyncFollowerStream, is_async=True)(self, ops)
        else:
            stream = library.stream_class(_SyncFollowerStream, is_async=False)(self, ops)
        self.context.counters.add("redis_followed")
        return response_of(library, head, stream, self.request)


def response_of(library: Library, head: Head, stream: Any, request: Any) -> Any:
    """A response of the caller's library from another process's head and *stream*."""
    extensions: dict[str, Any] = {}
    if head.http_version is not None:
        extensions["http_version"] = head.http_version
    if head.reason_phrase is not None:
        extensions["reason_phrase"] = head.reason_phrase
    return library.Response(
        head.status,
        headers=list(head.headers),
        stream=stream,
        request=request,
        extensions=extensions,
    )


class _AsyncFollowerStream:
    def __init__(self, follower: _Follower, ops: AsyncOps) -> None:
        self._follower = follower
        self._ops = ops

    async def __aiter__(self) -> AsyncIterator[bytes]:
        follower = self._follower
        reading = follower.reading
        try:
            while True:
                while reading.chunks:
                    yield reading.chunks.popleft()
                if follower.complete():
                    return
                try:
                    await _advance_async(reading, follower.presence, self._ops, True)
                except RedisTrouble as trouble:
                    raise follower.lost_redis(trouble) from None
        finally:
            await follower.presence.leave_async(self._ops)

    async def aclose(self) -> None:
        # A read in progress belongs to the iteration being stopped; this process no
        # longer follows the round.
        await self._follower.presence.leave_async(self._ops)


class _SyncFollowerStream:
    def __init__(self, follower: _Follower, ops: SyncOps) -> None:
        self._follower = follower
        self._ops = ops

    def __iter__(self) -> Iterator[bytes]:
        follower = self._follower
        reading = follower.reading
        try:
            while True:
                while reading.chunks:
                    yield reading.chunks.popleft()
                if follower.complete():
                    return
                try:
                    _advance_sync(reading, follower.presence, self._ops, True)
                except RedisTrouble as trouble:
                    raise follower.lost_redis(trouble) from None
        finally:
            follower.presence.leave_sync(self._ops)

    def close(self) -> None:
        self._follower.presence.leave_sync(self._ops)


async def follow_async(context: Context, ops: AsyncOps, lease: Lease, request: Any, library: Library) -> Any:
    """The response of the round led by *lease*'s holder, or a :class:`Verdict`."""
    reading = Reading(lease, context.settings.wait_limit(request.extensions), context)
    presence = Presence(context, lease)
    settled: Any = None
    try:
        while not reading.ready(request.method, context):
            if reading.waited_too_long:
                return Verdict.ALONE
            await _advance_async(reading, presence, ops, False)
        settled = _Follower(context, reading, request, library, presence).settle(True, ops)
        return settled
    except RedisTrouble as trouble:
        reading.report(trouble)
        return Verdict.ALONE
    finally:
        # A live response keeps following as its readers read; anything else is over.
        if not isinstance(settled, library.Response) or reading.outcome is not None:
            await presence.leave_async(ops)


def follow_sync(context: Context, ops: SyncOps, lease: Lease, request: Any, library: Library) -> Any:
    reading = Reading(lease, context.settings.wait_limit(request.extensions), context)
    presence = Presence(context, lease)
    settled: Any = None
    try:
        while not reading.ready(request.method, context):
            if reading.waited_too_long:
                return Verdict.ALONE
            _advance_sync(reading, presence, ops, False)
        settled = _Follower(context, reading, request, library, presence).settle(False, ops)
        return settled
    except RedisTrouble as trouble:
        reading.report(trouble)
        return Verdict.ALONE
    finally:
        if not isinstance(settled, library.Response) or reading.outcome is not None:
            presence.leave_sync(ops)
