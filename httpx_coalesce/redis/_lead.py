"""The fleet leader's side: send the request upstream, publish the response as it comes.

The leader hands the local flight a response whose stream passes the upstream's bytes
through and appends them to the round's Redis stream on the way. Publishing is best
effort: if Redis fails or the lease is lost, the leader stops publishing and its own
callers carry on as if there were no Redis. It never publishes after losing its lease,
since every append checks the lease in the same script.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from .._library import Library
from .._limits import Limits
from .._replay import Head
from .._tasks import cancelled_from_outside
from .._upstream import is_buffered
from ._context import Context
from ._errors import RedisTrouble
from ._keeper import Hold
from ._ops import AsyncOps, Lease, SyncOps
from ._records import ABORT, CHUNK, END, MOVED, TOO_LARGE, Record, error_record, head_record

__all__ = ["Lead", "lead_async", "lead_sync"]

logger = logging.getLogger("httpx_coalesce.redis")

#: A buffered body goes out in pieces of about this size; a small one in one go.
FLUSH_BYTES = 256 * 1024


class Publication:
    """The records the leader still has to write, and whether they are worth a round trip now.

    A buffered response (bounded, known length) is handed out only whole, by the local
    flight and by followers alike, so its records wait and go together: one round trip
    for a small body, with the release of the lease. A live response goes record by
    record, as it arrives.
    """

    __slots__ = ("_body_bytes", "_buffered", "_max_body", "_pending_bytes", "closed", "pending")

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._buffered = False
        self._body_bytes = 0
        self._pending_bytes = 0
        self.pending: list[Record] = []
        #: The final record is queued: nothing more is added.
        self.closed = False

    def start(self, head: Head, buffered: bool) -> bool:
        """Queue the head; True if it should go out now."""
        self._buffered = buffered
        self._add(head_record(head))
        return not buffered

    def chunk(self, data: bytes) -> bool:
        """Queue a body chunk; True if the queue should go out now."""
        if self.closed:
            return False
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            # Followers must not buffer more than the local flight would: they make
            # their own request, or (already streaming) stop with an error. The chunks
            # not yet sent are of no use to anyone now.
            self.take()
            self._finish((TOO_LARGE, b""))
            return True
        self._add((CHUNK, data))
        return not self._buffered or self._pending_bytes >= FLUSH_BYTES

    def end(self) -> None:
        self._finish((END, b"%d" % self._body_bytes))

    def fail(self, error: BaseException) -> None:
        self._finish(error_record(error))

    def abort(self) -> None:
        """The leader stops before the end for a reason of its own (its callers left)."""
        self._finish((ABORT, b""))

    def take(self) -> list[Record]:
        pending, self.pending, self._pending_bytes = self.pending, [], 0
        return pending

    def _add(self, record: Record) -> None:
        if not self.closed:
            self.pending.append(record)
            self._pending_bytes += len(record[1])

    def _finish(self, record: Record) -> None:
        self._add(record)
        self.closed = True


class Lead:
    """One round this process leads: its lease, what it publishes, and where it fails."""

    def __init__(self, context: Context, hold: Hold, replaces: Lease | None = None) -> None:
        self._context = context
        self.hold = hold
        #: The round this one takes over from, that stopped before its end.
        self._replaces = replaces
        self.publication = Publication(context.limits.max_body_bytes)
        #: Nothing more goes to Redis: the final record went out, or the lease or
        #: Redis was lost.
        self.stopped = False

    @property
    def limits(self) -> Limits:
        return self._context.limits

    def _batch(self) -> tuple[list[Record], bool] | None:
        if self.stopped:
            return None
        if self.hold.lost:
            self._stop()
            return None
        records = self.publication.take()
        final = self.publication.closed
        if not records and not final:
            return None
        return records, final

    def _done(self, held: bool, final: bool) -> None:
        if not held:
            logger.debug("lease %s lost: no longer publishing", self.hold.lease.key)
        if final or not held:
            self._stop()

    def _failed(self, trouble: RedisTrouble) -> None:
        self._stop()
        self._context.report(trouble)

    def _stop(self) -> None:
        self.stopped = True
        self.hold.release()

    def _moved(self) -> tuple[Lease, list[Record]] | None:
        replaced = self._replaces
        if replaced is None:
            return None
        lease = self.hold.lease
        # Written under this round's lease into the old round's stream: it wakes the
        # followers still waiting there, and sends late ones here instead of into
        # another election after this round may already be over.
        return Lease(lease.key, replaced.stream, lease.token), [(MOVED, lease.token.encode())]

    async def announce_async(self, ops: AsyncOps) -> None:
        """Tell the followers of the replaced round, if any, where to go."""
        moved = self._moved()
        if moved is None:
            return
        settings = self._context.settings
        try:
            await ops.append(*moved, settings.lease_ms, settings.stream_ttl_ms, final=False)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    def announce_sync(self, ops: SyncOps) -> None:
        moved = self._moved()
        if moved is None:
            return
        settings = self._context.settings
        try:
            ops.append(*moved, settings.lease_ms, settings.stream_ttl_ms, final=False)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    async def flush_async(self, ops: AsyncOps) -> None:
        """Write what is queued. Never raises but for cancellation."""
        batch = self._batch()
        if batch is None:
            return
        records, final = batch
        settings = self._context.settings
        try:
            held = await ops.append(
                self.hold.lease, records, settings.lease_ms, settings.stream_ttl_ms, final
            )
        except RedisTrouble as trouble:
            self._failed(trouble)
            return
        self._done(held, final)

    def flush_sync(self, ops: SyncOps) -> None:
        batch = self._batch()
        if batch is None:
            return
        records, final = batch
        settings = self._context.settings
        try:
            held = ops.append(self.hold.lease, records, settings.lease_ms, settings.stream_ttl_ms, final)
        except RedisTrouble as trouble:
            self._failed(trouble)
            return
        self._done(held, final)


def _wrap(response: Any, stream: Any, request: Any, library: Library) -> Any:
    return library.Response(
        response.status_code,
        headers=response.headers.raw,
        stream=stream,
        request=request,
        extensions=response.extensions,
    )


class _AsyncLeaderStream:
    def __init__(self, response: Any, lead: Lead, ops: AsyncOps) -> None:
        self._response = response
        self._lead = lead
        self._ops = ops
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lead = self._lead
        publication = lead.publication
        try:
            async for chunk in self._response.stream:
                if chunk:
                    # Local readers first: the Redis round trip happens while they read.
                    yield chunk
                    if publication.chunk(chunk):
                        await lead.flush_async(self._ops)
        except BaseException as error:
            # A BaseException from below (not this task's cancellation, nor the reader
            # closing this generator early) is an answer too: followers elsewhere must
            # not elect a leader to send the call again.
            if not isinstance(error, GeneratorExit) and not cancelled_from_outside(error):
                publication.fail(error)
                await lead.flush_async(self._ops)
            raise
        publication.end()
        await lead.flush_async(self._ops)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._response.aclose()
        finally:
            # Still open here means the local flight stopped reading before the end:
            # followers elect a new leader (or, mid-body, stop with an error).
            self._lead.publication.abort()
            with anyio.CancelScope(shield=True):
                await self._lead.flush_async(self._ops)
            self._lead.hold.release()


class _SyncLeaderStream:
    def __init__(self, response: Any, lead: Lead, ops: SyncOps) -> None:
        self._response = response
        self._lead = lead
        self._ops = ops
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        lead = self._lead
        publication = lead.publication
        try:
            for chunk in self._response.stream:
                if chunk:
                    yield chunk
                    if publication.chunk(chunk):
                        lead.flush_sync(self._ops)
        except BaseException as error:
            if not isinstance(error, GeneratorExit):  # closed early: close() aborts
                publication.fail(error)
                lead.flush_sync(self._ops)
            raise
        publication.end()
        lead.flush_sync(self._ops)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._response.close()
        finally:
            self._lead.publication.abort()
            self._lead.flush_sync(self._ops)
            self._lead.hold.release()


async def lead_async(lead: Lead, ops: AsyncOps, request: Any, library: Library, send: Any) -> Any:
    """Send *request* upstream for the fleet; the response publishes itself as it is read."""
    publication = lead.publication
    try:
        await lead.announce_async(ops)
        try:
            response = await send(request)
        except BaseException as error:
            if not cancelled_from_outside(error):
                publication.fail(error)
                await lead.flush_async(ops)
            raise
        stream = library.stream_class(_AsyncLeaderStream, is_async=True)(response, lead, ops)
        wrapped = _wrap(response, stream, request, library)
        head = Head.of(response)
        try:
            if publication.start(head, is_buffered(head, request.method, lead.limits)):
                await lead.flush_async(ops)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return wrapped
    except BaseException:
        # Cancelled, or failed upstream: either way the lease goes now, not at expiry.
        publication.abort()
        with anyio.CancelScope(shield=True):
            await lead.flush_async(ops)
        lead.hold.release()
        raise


def lead_sync(lead: Lead, ops: SyncOps, request: Any, library: Library, send: Any) -> Any:
    publication = lead.publication
    try:
        lead.announce_sync(ops)
        try:
            response = send(request)
        except BaseException as error:
            publication.fail(error)
            lead.flush_sync(ops)
            raise
        stream = library.stream_class(_SyncLeaderStream, is_async=False)(response, lead, ops)
        wrapped = _wrap(response, stream, request, library)
        head = Head.of(response)
        try:
            if publication.start(head, is_buffered(head, request.method, lead.limits)):
                lead.flush_sync(ops)
        except BaseException:
            stream.close()
            raise
        return wrapped
    except BaseException:
        publication.abort()
        lead.flush_sync(ops)
        lead.hold.release()
        raise
