"""The upstream side of a flight: send the leader's request, pump the answer in.

The pump runs apart from every caller (a detached task, or a worker thread), so a
caller that goes away, leader included, takes nothing from the others. It reads the
upstream body as fast as it arrives, whatever the readers do, until the slowest
reader lags a whole body limit behind.

The two pumps are the same steps, once with ``await`` and once without.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._flight import Flight
from ._limits import Limits
from ._replay import Head

__all__ = ["is_buffered", "pump_async", "pump_sync"]

# Statuses whose responses carry no body, whatever their headers say.
_BODILESS = frozenset({204, 304})


def is_buffered(head: Head, method: str, limits: Limits) -> bool:
    """Whether to hand the response out only once its body is complete.

    A body of known, bounded length that is not an event stream arrives in one go, so
    waiting for it costs nothing and lets every caller share one bytes object. The rest
    (event streams, chunked bodies, long downloads) fans out live.
    """
    if method == "HEAD" or head.status in _BODILESS or head.status < 200:
        return True
    if head.is_event_stream():
        return False
    length = head.content_length()
    return length is not None and length <= limits.max_body_bytes


async def pump_async(
    flight: Flight, send: Callable[[Any], Awaitable[Any]], request: Any, limits: Limits
) -> None:
    """Run in a detached task; cancelled (natively) when the last caller leaves."""
    stream = None
    try:
        try:
            response = await send(request)
        except Exception as error:
            flight.fail(error)
            return
        # Kept apart from the Response, which a buffered flight hands on to its leader
        # (see Flight.finish) with a stream of its own.
        stream = response.stream
        head = Head.of(response)
        if is_buffered(head, request.method, limits):
            # Nobody reads a buffered body before it is whole: gather it without taking
            # the lock or waking anyone per chunk.
            flight.finish(head, [chunk async for chunk in stream], response)
        else:
            flight.publish(head)
            async for chunk in stream:
                if chunk:
                    flight.append(chunk)
                    await flight.wait_async(flight.pump_may_go_on)
            flight.finish(head)
    except Exception as error:
        flight.fail(error)
    except BaseException:
        # Cancelled: close the upstream response all the same (shielded, or trio would
        # cancel the close too), so its connection goes back to the pool or away.
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            stream = None
        raise
    finally:
        # Cancelled by the last caller leaving, or stopped by something that is not an
        # upstream error: either way no waiter may be left waiting.
        flight.abandon()
        if stream is not None:
            await stream.aclose()


def pump_sync(flight: Flight, send: Callable[[Any], Any], request: Any, limits: Limits) -> None:
    stop = threading.Event()
    try:
        if not flight.set_canceller(stop.set):
            return
        try:
            response = send(request)
        except Exception as error:
            flight.fail(error)
            return
        stream = response.stream  # see pump_async
        try:
            if stop.is_set():
                return
            head = Head.of(response)
            if is_buffered(head, request.method, limits):
                flight.finish(head, list(stream), response)
                return
            flight.publish(head)
            for chunk in stream:
                # A thread cannot be interrupted mid-read; it stops at the next chunk.
                if stop.is_set():
                    return
                if chunk:
                    flight.append(chunk)
                    flight.wait(flight.pump_may_go_on)
            flight.finish(head)
        except Exception as error:
            flight.fail(error)
        finally:
            stream.close()
    finally:
        flight.abandon()
