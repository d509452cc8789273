"""The fleet leader's side: send the request upstream, publish the response as it comes.

The leader hands the local flight a response whose stream passes the upstream's bytes
through and appends them to the round's Redis stream on the way. Redis trouble never
reaches the leader's own callers: what Redis could not take waits in the leader and
goes out once Redis answers again (see ``Lead``). Every append checks, in the same
script, that the round is still this leader's.

On an event loop the call runs in a task of its own (``_FleetCall``), so it can outlive
the local flight while another process still follows the round; a sync leader runs it
in its caller's thread and stops with its callers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from .._library import Library
from .._limits import Limits
from .._replay import Head
from .._tasks import cancelled_from_outside, spawn_detached
from .._upstream import is_buffered
from .._window import shareable_later
from ._context import Context
from ._errors import RedisTrouble
from ._follow import watch_key
from ._keeper import Hold
from ._ops import AsyncOps, Lease, SyncOps
from ._records import (
    ABORT,
    CHUNK,
    END,
    MOVED,
    PRESENCE,
    TOO_LARGE,
    Record,
    chunk_record,
    decode_chunk,
    error_record,
    head_record,
    window_value,
)
from ._settings import Settings

__all__ = ["Lead", "lead_async", "lead_sync"]

logger = logging.getLogger("httpx_coalesce.redis")

#: A buffered body goes out in pieces of about this size; a small one in one go.
FLUSH_BYTES = 256 * 1024


class Publication:
    """Every record of the round, and how many of them Redis has.

    The leader keeps them all (the body is bounded by ``max_body_bytes``): what Redis
    could not take is written later, and a round Redis lost is written again from its
    head, each chunk with its offset so a reader skips what it has.

    A buffered response (bounded, known length) is handed out only whole, by the local
    flight and by followers alike, so its records wait and go together: one round trip
    for a small body, with the release of the lease. A live response goes record by
    record, as it arrives.
    """

    __slots__ = (
        "_body_bytes",
        "_buffered",
        "_max_body",
        "closed",
        "ended",
        "generation",
        "head",
        "records",
        "taken",
        "written",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._buffered = False
        self._body_bytes = 0
        self.records: list[Record] = []
        #: How many of ``records`` Redis has, as far as the leader knows.
        self.written = 0
        #: How many of ``records`` Redis has or a write on its way carries: those stay
        #: as they are (and where they are) until that write returns.
        self.taken = 0
        #: Counts the times the round was started again from its head: a write begun
        #: before that says nothing of what the new stream has.
        self.generation = 0
        #: The final record is queued: nothing more is added.
        self.closed = False
        #: The final record is the end of a whole body.
        self.ended = False
        self.head: Head | None = None

    @property
    def body_bytes(self) -> int:
        return self._body_bytes

    def start(self, head: Head, buffered: bool) -> bool:
        """Queue the head; True if it should go out now."""
        self.head = head
        self._buffered = buffered
        self._add(head_record(head))
        return not buffered

    def chunk(self, data: bytes) -> bool:
        """Queue a body chunk; True if the queue should go out now."""
        if self.closed:
            return False
        offset = self._body_bytes
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            # Followers must not buffer more than the local flight would: they make
            # their own request, or (already streaming) stop with an error. The chunks
            # not yet sent are of no use to anyone now.
            del self.records[max(self.written, self.taken) :]
            self._finish((TOO_LARGE, b""))
            return True
        self._add(chunk_record(offset, data))
        return not self._buffered or self.due_bytes() >= FLUSH_BYTES

    def end(self) -> None:
        self._finish((END, b"%d" % self._body_bytes))
        self.ended = True

    def body(self) -> bytes:
        """The whole body, once ended."""
        return b"".join(decode_chunk(data)[1] for kind, data in self.records if kind == CHUNK)

    def fail(self, error: BaseException) -> None:
        self._finish(error_record(error))

    def abort(self) -> None:
        """The leader stops before the end for a reason of its own (its callers left)."""
        self._finish((ABORT, b""))

    def ask_presence(self) -> bool:
        """Ask followers to mark their presence; True if that record should go out now."""
        if self.closed or (PRESENCE, b"") in self.records:
            return False
        self._add((PRESENCE, b""))
        return True

    def merge_due(self) -> None:
        """Join the body chunks Redis does not have yet, neighbours in the body, into
        records of up to ``FLUSH_BYTES``: one stream entry each, and one for its
        followers to read, instead of one per piece the upstream sent. Only while no
        write is on its way (it would move records under it)."""
        merged: list[Record] = []
        run: list[Record] = []
        run_bytes = 0

        def close_run() -> None:
            if len(run) == 1:
                merged.append(run[0])
            elif run:
                offset = decode_chunk(run[0][1])[0]
                merged.append(chunk_record(offset, b"".join(decode_chunk(data)[1] for _, data in run)))
            run.clear()

        for record in self.records[self.written :]:
            if record[0] != CHUNK:
                close_run()
                merged.append(record)
                continue
            if run and run_bytes + len(record[1]) > FLUSH_BYTES:
                close_run()
            if not run:
                run_bytes = 0
            run.append(record)
            run_bytes += len(record[1])
        close_run()
        self.records[self.written :] = merged

    def due(self, max_bytes: int | None = None) -> tuple[list[Record], bool]:
        """The records Redis does not have yet (about *max_bytes* of them at most), and
        whether they end with the final record: taken by a write."""
        end = len(self.records)
        if max_bytes is not None:
            size = 0
            for index in range(self.written, end):
                size += len(self.records[index][1])
                if size > max_bytes and index > self.written:
                    end = index
                    break
        self.taken = end
        return self.records[self.written : end], self.closed and end == len(self.records)

    def rewrite(self) -> None:
        """Redis may have lost the stream: everything is due again."""
        self.written = self.taken = 0
        self.generation += 1

    def wrote(self, start: int, count: int, generation: int) -> None:
        """Redis took *count* records from *start* (a write begun in *generation*)."""
        if generation == self.generation:
            self.written = max(self.written, start + count)

    def due_bytes(self) -> int:
        return sum(len(data) for _, data in self.records[self.written :])

    def _add(self, record: Record) -> None:
        if not self.closed:
            self.records.append(record)

    def _finish(self, record: Record) -> None:
        self._add(record)
        self.closed = True


@dataclass(frozen=True, slots=True)
class _Batch:
    """Records the caller's path writes: from index *start* of the round, in *generation*.

    From a start past 0 the stream must still be in Redis (``expect_stream``).
    """

    records: list[Record]
    final: bool
    start: int
    generation: int


#: The arguments of an ``ops.append``: lease, records, lease_ms, ttl_ms, final, expect_stream.
_Append = tuple[Lease, list[Record], int, int, bool, bool]


class Lead:
    """One round this process leads: its lease, what it publishes, and where it fails.

    Records go out from the caller's path as they come. Once Redis fails (an error, a
    timeout, or a round it no longer has), the lead is *behind*: the caller's path stops
    writing, and the lease keeper's thread writes what is waiting once Redis answers,
    then hands back. A round Redis lost or let lapse is taken again with the leader's
    own token and written again from its head; the key's lease too, but only if it is
    free. If another process took the lease meanwhile, it leads a round of its own for
    the callers that came since; this round goes on to its end for the followers it
    has (each round has its own stream and heartbeat, see ``_scripts``).
    """

    def __init__(
        self, context: Context, hold: Hold, replaces: Lease | None = None, window_key: str = ""
    ) -> None:
        self._context = context
        self._window_key = window_key
        self.hold = hold
        #: The round this one takes over from, that stopped before its end.
        self._replaces = replaces
        self.publication = Publication(context.limits.max_body_bytes)
        #: Nothing more goes to Redis: the final record went out, or Redis failed for
        #: longer than a stream lives.
        self.stopped = False
        self._lock = threading.Lock()
        self._behind_since: float | None = None
        #: Redis said the round is not ours: take it again before writing.
        self._unsure = False
        hold.publisher = self

    @property
    def limits(self) -> Limits:
        return self._context.limits

    @property
    def settings(self) -> Settings:
        return self._context.settings

    @property
    def behind(self) -> bool:
        return self._behind_since is not None and not self.stopped

    def report(self, trouble: RedisTrouble) -> None:
        self._context.report(trouble)

    def _batch(self) -> _Batch | None:
        """What the caller's path writes now, if it writes at all."""
        with self._lock:
            if self.stopped or self._behind_since is not None:
                return None
            publication = self.publication
            if publication.taken <= publication.written:
                publication.merge_due()
            records, final = publication.due()
            if not records:
                return None
            return _Batch(records, final, publication.written, publication.generation)

    def _done(self, batch: _Batch, held: bool) -> None:
        with self._lock:
            if held:
                self.publication.wrote(batch.start, len(batch.records), batch.generation)
                if batch.final:
                    self._stop()
                return
            self._unsure = True
            self._fall_behind()

    def _failed(self, trouble: RedisTrouble) -> None:
        with self._lock:
            first = self._behind_since is None
            self._fall_behind()
        if first:
            self._context.report(trouble)

    def _fall_behind(self) -> None:
        if self._behind_since is None:
            self._behind_since = time.monotonic()
            logger.debug("Redis did not take a record of %s: writing it later", self.hold.lease.key)

    def _stop(self) -> None:
        self.stopped = True
        self.hold.release()

    def settle(self) -> None:
        """The caller's path is done: release the lease, or leave what is waiting to the keeper."""
        with self._lock:
            if self.stopped or self._behind_since is None:
                self._stop()

    # -- the keeper's side (its thread) --------------------------------------------------

    def round_lost(self) -> None:
        with self._lock:
            self._unsure = True
            self._fall_behind()

    def overdue(self) -> bool:
        with self._lock:
            since = self._behind_since
            if since is None or time.monotonic() - since < self._context.settings.stream_ttl:
                return False
            # Past this, the stream would have expired anyway: followers wait for the
            # leader's lease to run out, then go on without it.
            logger.debug("Redis failed too long: %s no longer publishes", self.hold.lease.key)
            self.stopped = True
            return True

    def catch_up(self, ops: SyncOps) -> bool:
        settings = self._context.settings
        lease = self.hold.lease
        # Redis said the round is not ours: it lost the round's heartbeat (a restart, a
        # failover, eviction) or let it lapse (a blip longer than a lease), and maybe the
        # stream with it. The round is written again from its head, taking its heartbeat
        # back (its token is its own: no other leader can hold it) and the lease if free.
        retake = self._unsure
        if retake:
            with self._lock:
                self.publication.rewrite()
        try:
            while True:
                with self._lock:
                    publication = self.publication
                    records, final = publication.due(FLUSH_BYTES)
                    start, generation = publication.written, publication.generation
                    if not records and not retake:
                        # Up to date: the caller's path writes what comes next.
                        self._behind_since = None
                        return self.stopped
                if not ops.append(
                    lease, records, settings.lease_ms, settings.stream_ttl_ms, final, start > 0, retake
                ):
                    self._unsure = True
                    return False
                retake = self._unsure = False
                with self._lock:
                    publication.wrote(start, len(records), generation)
                    if final:
                        self.stopped = True
                        self._behind_since = None
                        return True
        except RedisTrouble as trouble:
            logger.debug("still cannot write to Redis: %s", trouble)
            return self.overdue()

    # -- the caller's side ------------------------------------------------------------

    def _window_entry(self) -> tuple[str, bytes] | None:
        """The fleet window's key and entry for this round, if it keeps one: a whole,
        successful body the server lets others have later (the local window's rules),
        written while Redis is keeping up."""
        context = self._context
        publication = self.publication
        head = publication.head
        if (
            context.window <= 0
            or not publication.ended
            or self.behind
            or head is None
            or not shareable_later(head)
            or publication.body_bytes > min(context.limits.window_bytes, context.limits.max_body_bytes)
        ):
            return None
        return self._window_key, window_value(head, publication.body())

    async def share_async(self, ops: AsyncOps) -> None:
        """Keep the finished response in Redis for late callers elsewhere (best effort)."""
        entry = self._window_entry()
        if entry is None:
            return
        try:
            await ops.window_put(*entry, self._context.window_ms)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    def share_sync(self, ops: SyncOps) -> None:
        entry = self._window_entry()
        if entry is None:
            return
        try:
            ops.window_put(*entry, self._context.window_ms)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    def _moved(self) -> _Append | None:
        """The write that tells the replaced round's followers where to go, if any."""
        replaced = self._replaces
        if replaced is None:
            return None
        lease = self.hold.lease
        settings = self._context.settings
        # Written under this round's lease into the old round's stream: it wakes the
        # followers still waiting there, and sends late ones here instead of into
        # another election after this round may already be over.
        moved = Lease(lease.key, replaced.stream, lease.token, lease.round)
        return moved, [(MOVED, lease.token.encode())], settings.lease_ms, settings.stream_ttl_ms, False, False

    def _written(self, batch: _Batch) -> _Append:
        """The write of *batch*."""
        settings = self._context.settings
        return (
            self.hold.lease,
            batch.records,
            settings.lease_ms,
            settings.stream_ttl_ms,
            batch.final,
            batch.start > 0,
        )

    # The faces below only carry out the writes the methods above make.

    async def announce_async(self, ops: AsyncOps) -> None:
        """Tell the followers of the replaced round, if any, where to go."""
        moved = self._moved()
        if moved is None:
            return
        try:
            await ops.append(*moved)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    def announce_sync(self, ops: SyncOps) -> None:
        moved = self._moved()
        if moved is None:
            return
        try:
            ops.append(*moved)
        except RedisTrouble as trouble:
            self._context.report(trouble)

    async def flush_async(self, ops: AsyncOps) -> None:
        """Write what is queued, unless the keeper does; what was queued while a write
        was on its way goes out in the next. Never raises but for cancellation. One
        task writes at a time (``_Writer``, or the fleet call once it is over)."""
        while (batch := self._batch()) is not None:
            try:
                held = await ops.append(*self._written(batch))
            except RedisTrouble as trouble:
                self._failed(trouble)
                return
            self._done(batch, held)

    def flush_sync(self, ops: SyncOps) -> None:
        batch = self._batch()
        if batch is None:
            return
        try:
            held = ops.append(*self._written(batch))
        except RedisTrouble as trouble:
            self._failed(trouble)
            return
        self._done(batch, held)


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


class _Writer:
    """Writes a round's records from a task of its own, so the upstream is read on
    while a write is on its way. What arrives meanwhile goes out together in the next
    write (one round trip, one stream entry per run of chunks), as Nagle's algorithm
    does for TCP; a record that arrives with no write on its way goes at once, so the
    head and the first bytes are never held back."""

    def __init__(self, lead: Lead, ops: AsyncOps) -> None:
        self._lead = lead
        self._ops = ops
        self._wake = anyio.Event()
        #: Set while nothing is queued or on its way.
        self._idle = anyio.Event()
        self._idle.set()

    def kick(self) -> None:
        """Records were queued: write them now, or after the write on its way."""
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until what was queued is written (or left to the keeper)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._lead.flush_async(self._ops)
            if not self._wake.is_set():
                self._idle.set()


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
        self._writer = _Writer(lead, ops)

    def local_left(self) -> None:
        """The local flight stopped listening: from now on the call is the followers'."""
        self._local_gone.set()
        self.from_local.close()

    async def run(self) -> None:
        lead = self._lead
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_followers, group.cancel_scope)
                group.start_soon(self._writer.run)
                await self._exchange()
                await self._writer.drain()
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
            lead.settle()
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
        lead, ops, writer = self._lead, self._ops, self._writer
        publication = lead.publication
        await lead.announce_async(ops)
        try:
            response = await self._send(self._request)
        except BaseException as error:
            if cancelled_from_outside(error):
                raise
            publication.fail(error)
            writer.kick()
            await writer.drain()
            self.error = error
            self.headed.set()
            return
        try:
            head = Head.of(response)
            if publication.start(head, is_buffered(head, self._request.method, lead.limits)):
                writer.kick()
            self.response = response
            self.headed.set()
            try:
                async for chunk in response.stream:
                    if chunk:
                        # Local readers first: the Redis round trip happens while they read.
                        await self._deliver(chunk)
                        if publication.chunk(chunk):
                            writer.kick()
            except BaseException as error:
                # A BaseException from below (not this task's cancellation) is an
                # answer too: followers elsewhere must not elect a leader to send the
                # call again.
                if cancelled_from_outside(error):
                    raise
                publication.fail(error)
                writer.kick()
                await writer.drain()
                await self._deliver(error)
                return
            publication.end()
            writer.kick()
            # The end reaches Redis before the local callers: a process that closes its
            # backend once they are done has then left its followers a whole round.
            await writer.drain()
            # So does the fleet window's entry, as the local window has its entry before
            # they see the end: a caller anywhere that starts once one of them has the
            # whole body finds it there.
            await lead.share_async(ops)
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
        # Followers say they still wait only once asked: a round whose leader's callers
        # stay costs no presence traffic at all.
        if lead.publication.ask_presence():
            self._writer.kick()
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
            followed = await self._followed()
            if followed is None:
                # Redis cannot tell: a blip must not stop a call that followers wait for.
                pass
            elif followed:
                unfollowed_since = None
            else:
                now = time.monotonic()
                if unfollowed_since is None:
                    unfollowed_since = now
                elif now - unfollowed_since >= _PATIENCE * interval:
                    scope.cancel()
                    return
            await anyio.sleep(interval / 2)

    async def _followed(self) -> bool | None:
        """Whether some process follows the round; None if Redis cannot say."""
        try:
            read = await self._ops.read(self._watch, self._lead.hold.lease.stream, b"$", None)
        except RedisTrouble as trouble:
            self._lead.report(trouble)
            return None
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
        lead.share_sync(self._ops)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._response.close()
        finally:
            self._lead.publication.abort()
            self._lead.flush_sync(self._ops)
            self._lead.settle()


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
        lead.settle()
        raise
