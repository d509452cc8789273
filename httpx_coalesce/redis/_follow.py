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

import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from .._library import Library
from .._replay import Head
from .._upstream import is_buffered
from ._context import Context
from ._errors import Garbage, RedisTrouble
from ._names import is_token
from ._ops import AsyncOps, Entry, Lease, Read, SyncOps
from ._records import (
    ABORT,
    CHUNK,
    END,
    ERROR,
    HEAD,
    MOVED,
    TOO_LARGE,
    UpstreamFailure,
    decode_error,
    decode_head,
)

__all__ = ["Moved", "Verdict", "follow_async", "follow_sync"]


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


@dataclass(frozen=True, slots=True)
class Moved:
    """The round stopped early and a successor leads a new one: follow that instead."""

    token: str


class _Ended:
    __slots__ = ()


ENDED = _Ended()

Outcome = _Ended | UpstreamFailure | Stop | Moved


class Reading:
    """What a follower has read of a round so far."""

    def __init__(self, lease: Lease, wait_limit: float | None) -> None:
        self.lease = lease
        self._token = lease.token.encode()
        self._wait_limit = wait_limit
        self.after = b"0-0"
        self.head: Head | None = None
        self.chunks: deque[bytes] = deque()
        self._received = 0
        self.outcome: Outcome | None = None
        self._progress_at = time.monotonic()

    def feed(self, entries: list[Entry]) -> None:
        for entry_id, kind, data in entries:
            if kind == MOVED:
                # The stream of an aborted round, or of a vanished one (no final record).
                if self.outcome not in (None, Stop.ABORTED) or not is_token(data):
                    raise Garbage("a misplaced successor record")
                self.outcome = Moved(data.decode())
            elif self.outcome is not None:
                raise Garbage("a record after the final one")
            elif kind == HEAD:
                if self.head is not None:
                    raise Garbage("a second head")
                self.head = decode_head(data)
            elif kind == CHUNK:
                if self.head is None:
                    raise Garbage("a body chunk before the head")
                self.chunks.append(data)
                self._received += len(data)
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
            self.after = entry_id
        self._progress_at = time.monotonic()

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
        if read.entries:
            self.feed(read.entries)
            return False
        return read.lease != self._token

    def confirm(self, read: Read) -> None:
        """Take a second look after the lease was seen gone.

        The last record and the lease's release are one step, so a leader that ended
        well left its final record by the time its lease is gone.
        """
        if read.entries:
            self.feed(read.entries)
        else:
            self.outcome = Stop.VANISHED

    def ready(self, method: str, context: Context) -> bool:
        """Whether to stop waiting: the round is over, or a live response can go out."""
        if self.outcome is not None:
            return True
        return self.head is not None and not is_buffered(self.head, method, context.limits)


async def _advance_async(reading: Reading, ops: AsyncOps) -> None:
    lease = reading.lease
    if reading.took(await ops.read(lease.key, lease.stream, reading.after, reading.block(ops.block))):
        reading.confirm(await ops.read(lease.key, lease.stream, reading.after, None))


def _advance_sync(reading: Reading, ops: SyncOps) -> None:
    lease = reading.lease
    if reading.took(ops.read(lease.key, lease.stream, reading.after, reading.block(ops.block))):
        reading.confirm(ops.read(lease.key, lease.stream, reading.after, None))


class _Follower:
    """One follower's response as it reaches the caller's library."""

    def __init__(self, context: Context, reading: Reading, request: Any, library: Library) -> None:
        self.context = context
        self.reading = reading
        self.request = request
        self.library = library

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
        self.context.report(trouble)
        error: BaseException = self.library.module.ReadError(
            f"lost the shared response: Redis failed ({trouble})", request=self.request
        )
        return error

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
        extensions: dict[str, Any] = {}
        if head.http_version is not None:
            extensions["http_version"] = head.http_version
        if head.reason_phrase is not None:
            extensions["reason_phrase"] = head.reason_phrase
        return library.Response(
            head.status,
            headers=list(head.headers),
            stream=stream,
            request=self.request,
            extensions=extensions,
        )


class _AsyncFollowerStream:
    def __init__(self, follower: _Follower, ops: AsyncOps) -> None:
        self._follower = follower
        self._ops = ops

    async def __aiter__(self) -> AsyncIterator[bytes]:
        follower = self._follower
        reading = follower.reading
        while True:
            while reading.chunks:
                yield reading.chunks.popleft()
            if reading.outcome is ENDED:
                return
            if reading.outcome is not None:
                raise follower.error(reading.outcome)
            if reading.waited_too_long:
                raise follower.timeout()
            try:
                await _advance_async(reading, self._ops)
            except RedisTrouble as trouble:
                raise follower.lost_redis(trouble) from None

    async def aclose(self) -> None:
        # Holds nothing: a read in progress belongs to the iteration being stopped.
        return


class _SyncFollowerStream:
    def __init__(self, follower: _Follower, ops: SyncOps) -> None:
        self._follower = follower
        self._ops = ops

    def __iter__(self) -> Iterator[bytes]:
        follower = self._follower
        reading = follower.reading
        while True:
            while reading.chunks:
                yield reading.chunks.popleft()
            if reading.outcome is ENDED:
                return
            if reading.outcome is not None:
                raise follower.error(reading.outcome)
            if reading.waited_too_long:
                raise follower.timeout()
            try:
                _advance_sync(reading, self._ops)
            except RedisTrouble as trouble:
                raise follower.lost_redis(trouble) from None

    def close(self) -> None:
        return


async def follow_async(context: Context, ops: AsyncOps, lease: Lease, request: Any, library: Library) -> Any:
    """The response of the round led by *lease*'s holder, or a :class:`Verdict`."""
    reading = Reading(lease, context.settings.wait_limit(request.extensions))
    try:
        while not reading.ready(request.method, context):
            if reading.waited_too_long:
                return Verdict.ALONE
            await _advance_async(reading, ops)
    except RedisTrouble as trouble:
        context.report(trouble)
        return Verdict.ALONE
    return _Follower(context, reading, request, library).settle(True, ops)


def follow_sync(context: Context, ops: SyncOps, lease: Lease, request: Any, library: Library) -> Any:
    reading = Reading(lease, context.settings.wait_limit(request.extensions))
    try:
        while not reading.ready(request.method, context):
            if reading.waited_too_long:
                return Verdict.ALONE
            _advance_sync(reading, ops)
    except RedisTrouble as trouble:
        context.report(trouble)
        return Verdict.ALONE
    return _Follower(context, reading, request, library).settle(False, ops)
