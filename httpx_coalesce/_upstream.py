"""The upstream side of a flight: send the leader's request, pump the answer in.

Where the request is sent decides what the inner transport sees of its caller, so it
is sent in the leader's own context: on an event loop, from a detached task started
with the leader's ``contextvars`` (a task that outlives any one caller's
cancellation); for threads, from the leader's own thread, which blocks on the call as
it would alone. A live body is then pumped apart from every caller (the same task, or
a worker thread carrying the leader's ``contextvars``), so that no caller's cancellation
stops it midway, but at the pace of the fastest reader: the pump waits until some
reader asks for a chunk not pulled yet, and pulls that one. A lone caller thus sees
exactly the reads of the inner transport's body it would alone (none before it reads,
one per chunk it takes), and the upstream keeps its back-pressure. Readers behind the
fastest are served from the replay (memory, then the spool), never by waiting for it.

One exception to "apart from every caller": a body its leader reads alone. That reader
pulls each chunk itself (``pull_async``, ``pull_sync``), in its own thread or task as it
would alone, since a handoff to the pump and back costs two thread or task switches a
chunk. A thread cannot be cancelled mid-read; a task can, which breaks the body, so a
task pulls only once the body is past the memory bound and nobody can join it any more
(see ``Flight._may_pull_alone``).

Whatever stops the upstream call, other than a caller-side cancellation, ends up in the
flight, never in the event loop or a worker thread: the flight hands it to the leader's
caller as it was and to everyone else as an error of their own (see ``_response``).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._flight import Flight, Seat
from ._limits import Limits
from ._replay import Head
from ._signal import Signal
from ._tasks import cancelled_from_outside

__all__ = [
    "SMALL_BODY_BYTES",
    "is_buffered",
    "lead_sync",
    "pull_async",
    "pull_sync",
    "pump_async",
    "shares_whole",
]

logger = logging.getLogger("httpx_coalesce")

# Statuses whose responses carry no body, whatever their headers say.
_BODILESS = frozenset({204, 304})

#: A body of known length up to this is read whole before its headers are handed out.
#: It comes in the same flight of packets as its headers (a TCP initial window is ten
#: segments, ~14 KB; one HTTP/2 DATA frame is 16 KiB by default), so waiting for it
#: adds no round trip, and every caller then shares one bytes object. Anything longer
#: is handed out as soon as its headers arrive, as it would be alone.
SMALL_BODY_BYTES = 16 * 1024


def is_buffered(head: Head, method: str, limits: Limits) -> bool:
    """Whether to hand the response out only once its body is complete.

    Only a body too small for the wait to be noticed (see ``SMALL_BODY_BYTES``) that
    is not an event stream. The rest (event streams, chunked bodies, downloads) fans
    out live.
    """
    if method == "HEAD" or head.status in _BODILESS or head.status < 200:
        return True
    if head.is_event_stream():
        return False
    length = head.content_length()
    return length is not None and length <= min(SMALL_BODY_BYTES, limits.max_body_bytes)


def shares_whole(head: Head, limits: Limits) -> bool:
    """Whether a live body may be handed whole to the readers that read it whole
    (httpx's ``read()``): its length is known and fits in memory, and it is not an
    event stream (whose readers need every event as it comes)."""
    length = head.content_length()
    return length is not None and length <= limits.max_body_bytes and not head.is_event_stream()


async def pump_async(
    flight: Flight, send: Callable[[Any], Awaitable[Any]], request: Any, limits: Limits
) -> None:
    """Run in a detached task; cancelled (natively) when the last caller leaves."""
    response = head = stream = None
    chunks: list[bytes] | None = None
    try:
        response = await send(request)
        # Kept apart from the Response, which the flight hands on to its leader with a
        # stream of its own.
        stream = response.stream
        head = Head.of(response)
        if is_buffered(head, request.method, limits):
            # Nobody reads a buffered body before it is whole: gather it without taking
            # the lock or waking anyone per chunk.
            chunks = []
            async for chunk in stream:
                chunks.append(chunk)
            flight.finish(head, chunks, response)
        else:
            body = stream.__aiter__()
            pump_signal = flight.publish(head, response, shares_whole(head, limits), body)
            # The leader's caller reads through that Response now: holding it here would
            # keep its stream from being collected (and leaving) if the caller drops it.
            response = None
            while True:
                if not await flight.wait_async(flight.pull_wanted, signal=pump_signal):
                    return  # every reader left: the flight is over
                try:
                    chunk = await body.__anext__()
                except StopAsyncIteration:
                    break
                if chunk:
                    flight.append(chunk)
            flight.finish(head)
    except BaseException as error:
        if not cancelled_from_outside(error):
            # An upstream error, or a BaseException raised from below (a KeyboardInterrupt,
            # a framework's abort, a CancelledError the transport raised itself): the
            # flight's to hand out. Raised here it would end the task, the loop, or on
            # trio the whole run, and reach no caller.
            flight.fail(error, head, chunks, response)
        else:
            # Cancelled: close the upstream response all the same (shielded, or trio would
            # cancel the close too), so its connection goes back to the pool or away.
            if stream is not None:
                with anyio.CancelScope(shield=True):
                    await _close_async(stream)
                stream = None
            raise
    finally:
        # Stopped by something that is not an upstream error: no waiter may be left waiting.
        flight.abandon()
        if stream is not None:
            await _close_async(stream)


def lead_sync(
    flight: Flight,
    send: Callable[[Any], Any],
    request: Any,
    limits: Limits,
    start_thread: Callable[[Callable[[], None]], None],
) -> None:
    """Send *request* from the leader's own thread, which blocks on it as it would alone.

    A buffered body is read here too (it is small); a live one is handed to a worker
    thread through *start_thread*, carrying this thread's ``contextvars``, so the leader
    returns with the headers and reads at its own pace like every other caller.
    """
    response = head = stream = None
    chunks: list[bytes] | None = None
    pumped_elsewhere = False
    try:
        response = send(request)
        stream = response.stream
        head = Head.of(response)
        if is_buffered(head, request.method, limits):
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
            flight.finish(head, chunks, response)
        else:
            stop = threading.Event()
            if flight.set_canceller(stop.set):
                body = iter(stream)
                pump_signal = flight.publish(head, response, shares_whole(head, limits), body)
                context = contextvars.copy_context()
                start_thread(lambda: context.run(_pump_sync, flight, stream, body, head, stop, pump_signal))
                pumped_elsewhere = True  # the stream and the flight's end are the worker's now
    except BaseException as error:
        # In the leader's thread: the leader raises it itself (see Flight.fail).
        flight.fail(error, head, chunks, response)
    finally:
        if not pumped_elsewhere:
            flight.abandon()
            if stream is not None:
                _close_sync(stream)


def _pump_sync(
    flight: Flight, stream: Any, body: Any, head: Head, stop: threading.Event, pump_signal: Signal
) -> None:
    """A live body, in a worker thread, one chunk each time a reader asks for one."""
    try:
        while True:
            # A thread cannot be interrupted mid-read; it stops before the next one.
            if not flight.wait(flight.pull_wanted, signal=pump_signal) or stop.is_set():
                return
            try:
                chunk = next(body)
            except StopIteration:
                break
            if chunk:
                flight.append(chunk)
        flight.finish(head)
    except BaseException as error:
        # Whatever it is, a worker thread is no place for it: the readers get it.
        flight.fail(error)
    finally:
        flight.abandon()
        _close_sync(stream)


async def pull_async(flight: Flight, seat: Seat) -> bytes | None:
    """Pull the next chunk of *flight*'s live body in the calling task: the lone
    leader's (*seat*), told to by ``Flight.next_data`` (PULL). As the pump would, but
    with no task to wake and be woken by.

    Returns the chunk, already read by *seat*, or None: the body ended or failed (the
    reader asks ``next_data`` again). Raises only the task's own cancellation.
    """
    body: Any = flight.body
    head = flight.head
    assert head is not None
    try:
        chunk = b""
        while not chunk:  # an empty chunk is no chunk: alone, httpx skips it and reads on
            chunk = await body.__anext__()
    except StopAsyncIteration:
        flight.finish(head)
    except BaseException as error:
        if cancelled_from_outside(error):
            # Cancelled mid-read: the body is broken, and its reader is leaving. Nobody
            # may read on from it (a joiner waiting meanwhile goes alone).
            flight.abandon()
            raise
        flight.fail(error)  # the reader raises it at its next read, as alone
    else:
        flight.append(chunk, seat)
        return chunk
    return None


def pull_sync(flight: Flight, seat: Seat) -> bytes | None:
    """``pull_async`` for threads: pull the next chunk in the lone leader's thread."""
    body: Any = flight.body
    head = flight.head
    assert head is not None
    try:
        chunk = b""
        while not chunk:
            chunk = next(body)
    except StopIteration:
        flight.finish(head)
    except BaseException as error:
        # Its own thread's KeyboardInterrupt, too: the reader (the leader) raises it next.
        flight.fail(error)
    else:
        flight.append(chunk, seat)
        return chunk
    return None


async def _close_async(stream: Any) -> None:
    try:
        await stream.aclose()
    except Exception:
        # Nobody is left to tell: the body's readers already have their answer.
        logger.debug("closing an upstream response failed", exc_info=True)


def _close_sync(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        logger.debug("closing an upstream response failed", exc_info=True)
