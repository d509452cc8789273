"""The fleet leader's side: send the request upstream, publish the response as it comes.

The leader hands the local flight a response whose stream passes the upstream's bytes
through and appends them to the round's Redis stream on the way. Publishing is best
effort: if Redis fails or the lease is lost, the leader stops publishing and its own
callers carry on as if there were no Redis. It never publishes after losing its lease,
since every append checks the lease in the same script.

On an event loop the call runs in a task of its own (``_FleetCall``), so it can outlive
the local flight while another process still follows the round; a sync leader runs it
in its caller's thread and stops with its callers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from .._library import Library
from .._limits import Limits
from .._replay import Head
from .._tasks import cancelled_from_outside, spawn_detached
from .._upstream import is_buffered
from ._context import Context
from ._errors import RedisTrouble
from ._follow import watch_key
from ._keeper import Hold
from ._ops import AsyncOps, Lease, SyncOps
from ._records import ABORT, CHUNK, END, MOVED, TOO_LARGE, Record, error_record, head_record
from ._settings import Settings

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

    @property
    def settings(self) -> Settings:
        return self._context.settings

    def report(self, trouble: RedisTrouble) -> None:
        self._context.report(trouble)

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


#: Heartbeats without a follower before the fleet call is stopped. When the follower
#: holding the round's watch key leaves, another takes it only once its blocked read
#: returns: up to a heartbeat plus Redis's own timer tick (100 ms at ``hz 10``). One
#: heartbeat of patience could lose that race and stop a call a follower still waits
#: for; two cannot, and cost an unfollowed call at most one heartbeat more.
_PATIENCE = 2

#: Chunks the fleet call hands its local flight ahead of its reading: the local flight
#: pauses the upstream as it would alone, through this small a buffer.
_LOCAL_BUFFER = 16


class _End:
    __slots__ = ()


_END = _End()


class _FleetCall:
    """The fleet leader's upstream call, in a task of its own apart from the local flight.

    It sends the request, publishes the response as it comes and hands it to the local
    flight. When the local flight stops listening (its callers all left), the call goes
    on while another process still follows the round (see ``Presence``), so that no
    follower has to elect a leader that would send the call again; once nobody has
    followed for a heartbeat, or nothing more can reach a follower, it stops.
    """

    def __init__(self, lead: Lead, ops: AsyncOps, request: Any, library: Library, send: Any) -> None:
        self._lead = lead
        self._ops = ops
        self._request = request
        self._library = library
        self._send = send
        self._to_local, self.from_local = anyio.create_memory_object_stream[object](_LOCAL_BUFFER)
        self._local_gone = anyio.Event()
        #: Set once the head (``response``) or an error before it (``error``) is known.
        self.headed = anyio.Event()
        self.response: Any = None
        self.error: BaseException | None = None
        self._watch = watch_key(lead.hold.lease)

    def local_left(self) -> None:
        """The local flight stopped listening: from now on the call is the followers'."""
        self._local_gone.set()
        self.from_local.close()

    async def run(self) -> None:
        lead = self._lead
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_followers, group.cancel_scope)
                await self._exchange()
                group.cancel_scope.cancel()
        except Exception as error:  # a bug of ours: end the round, never the event loop
            logger.exception("fleet call failed: %s", error)
        finally:
            with anyio.CancelScope(shield=True):
                if not lead.publication.closed:
                    # Stopped before the end: followers elect a new leader (or,
                    # mid-body, stop with an error).
                    lead.publication.abort()
                await lead.flush_async(self._ops)
            lead.hold.release()
            if not self.headed.is_set():
                self.error = self.stopped_error()
                self.headed.set()
            self._to_local.close()

    def stopped_error(self) -> BaseException:
        """For the local flight, when the call stopped without an answer of its own."""
        error: BaseException = self._library.module.ReadError(
            "the fleet call stopped before the end of the response", request=self._request
        )
        return error

    async def _exchange(self) -> None:
        lead, ops = self._lead, self._ops
        publication = lead.publication
        await lead.announce_async(ops)
        try:
            response = await self._send(self._request)
        except BaseException as error:
            if cancelled_from_outside(error):
                raise
            publication.fail(error)
            await lead.flush_async(ops)
            self.error = error
            self.headed.set()
            return
        try:
            head = Head.of(response)
            if publication.start(head, is_buffered(head, self._request.method, lead.limits)):
                await lead.flush_async(ops)
            self.response = response
            self.headed.set()
            try:
                async for chunk in response.stream:
                    if chunk:
                        # Local readers first: the Redis round trip happens while they read.
                        await self._deliver(chunk)
                        if publication.chunk(chunk):
                            await lead.flush_async(ops)
            except BaseException as error:
                # A BaseException from below (not this task's cancellation) is an
                # answer too: followers elsewhere must not elect a leader to send the
                # call again.
                if cancelled_from_outside(error):
                    raise
                publication.fail(error)
                await lead.flush_async(ops)
                await self._deliver(error)
                return
            publication.end()
            await lead.flush_async(ops)
            await self._deliver(_END)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _deliver(self, item: object) -> None:
        if self._local_gone.is_set():
            return
        # The local flight may have left meanwhile.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._to_local.send(item)

    async def _watch_followers(self, scope: anyio.CancelScope) -> None:
        """Once the local flight has left, stop the call when no process follows it."""
        await self._local_gone.wait()
        lead = self._lead
        interval = lead.settings.interval
        unfollowed_since: float | None = None
        while True:
            if lead.stopped:
                # Nothing more can reach a follower (the final record went out, or the
                # lease or Redis is lost): the call serves nobody now. Not as soon as
                # the publication closes: its final record may still be on its way,
                # and cancelling that write would leave followers a round with no end.
                scope.cancel()
                return
            if await self._followed():
                unfollowed_since = None
            else:
                now = time.monotonic()
                if unfollowed_since is None:
                    unfollowed_since = now
                elif now - unfollowed_since >= _PATIENCE * interval:
                    scope.cancel()
                    return
            await anyio.sleep(interval / 2)

    async def _followed(self) -> bool:
        try:
            read = await self._ops.read(self._watch, self._lead.hold.lease.stream, b"$", None)
        except RedisTrouble as trouble:
            self._lead.report(trouble)
            return False
        return read.lease is not None


class _AsyncLeaderStream:
    def __init__(self, call: _FleetCall) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for item in self._call.from_local:
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, BaseException):
                raise item
            else:
                return
        # The channel closed without an end: the call was stopped from outside.
        raise self._call.stopped_error()

    async def aclose(self) -> None:
        self._call.local_left()


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
    """Send *request* upstream for the fleet, in a task of its own (see ``_FleetCall``);
    the response for the local flight reads what that task hands it."""
    call = _FleetCall(lead, ops, request, library, send)
    spawn_detached(call.run)
    try:
        await call.headed.wait()
    except BaseException:
        # The local flight gave up waiting (its callers all left): the call goes on for
        # whoever follows it elsewhere, and stops itself if nobody does.
        call.local_left()
        raise
    if call.error is not None:
        call.local_left()
        raise call.error
    stream = library.stream_class(_AsyncLeaderStream, is_async=True)(call)
    return _wrap(call.response, stream, request, library)


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
