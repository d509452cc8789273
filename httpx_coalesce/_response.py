"""Every caller's own Response: its own stream over the shared replay, its own request,
its own errors.

The stream keeps the caller's read position (on its seat), so iterating it again after
the end yields nothing more, and a stream that is dropped unclosed still gives its seat
back when it is collected.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from ._flight import END, Abandoned, Seat
from ._library import Library
from ._replay import Head
from ._tasks import start_janitor

__all__ = ["CoalesceInfo", "build_response", "fresh_error"]


@dataclass(frozen=True, slots=True)
class CoalesceInfo:
    """``response.extensions["coalesce"]``: how this response was obtained."""

    #: This caller's request was the one sent upstream.
    leader: bool
    #: Callers that had joined the flight when this response was handed out.
    callers: int
    #: The flight's id, as in the DEBUG log.
    flight_id: str
    #: Served from the window after the flight had finished.
    from_window: bool = False


def fresh_error(template: BaseException, request: Any, library: Library) -> BaseException:
    """A new exception like *template*, tied to *request*, in *request*'s library.

    One exception object raised in many tasks would share (and grow) one traceback, and
    an SDK inspecting ``error.request`` must see its own request.
    """
    cls = type(template)
    if not issubclass(cls, library.RequestError) and cls.__module__.startswith(("httpx", "httpcore")):
        # The flight's leader came from the other library: same error, this library's class.
        cls = getattr(library.module, cls.__name__, library.module.TransportError)
    if cls is type(template):
        try:
            error = copy.copy(template)
        except Exception:
            error = cls(str(template))
    else:
        error = cls(str(template))
    error.__traceback__ = None
    error.__cause__ = error.__context__ = None
    if isinstance(error, library.RequestError):
        error.request = request  # type: ignore[attr-defined]
    return error


class _SeatStream:
    def __init__(self, seat: Seat, request: Any, library: Library) -> None:
        self._seat = seat
        self._request = request
        self._library = library
        if not seat.flight.replay.complete:
            # A live stream whose caller forgets to close it must not hold the flight.
            weakref.finalize(self, seat.flight.table.leave_later, seat)

    def _read_budget(self) -> float | None:
        # A follower waits for each chunk no longer than its own read timeout would let
        # it wait alone; the leader's reads already run under the leader's timeouts.
        if self._seat.leader:
            return None
        timeout = self._request.extensions.get("timeout") or {}
        read = timeout.get("read")
        return None if read is None else float(read)

    def _timed_out(self) -> BaseException:
        self._seat.leave()
        error: BaseException = self._library.module.ReadTimeout(
            "timed out waiting for the coalesced response's next bytes", request=self._request
        )
        return error

    def _data_error(self, template: BaseException) -> BaseException:
        if isinstance(template, Abandoned):
            error: BaseException = self._library.module.ReadError(str(template), request=self._request)
            return error
        return fresh_error(template, self._request, self._library)


class _AsyncSeatStream(_SeatStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        seat = self._seat
        flight = seat.flight
        ready = partial(flight.next_data, seat)
        within = self._read_budget()
        while True:
            data = await flight.wait_async(ready, within)
            if data is None:
                raise self._timed_out()
            if data is END:
                seat.leave()
                return
            if isinstance(data, BaseException):
                seat.leave()
                raise self._data_error(data)
            assert isinstance(data, bytes)
            yield data

    async def aclose(self) -> None:
        self._seat.leave()


class _SyncSeatStream(_SeatStream):
    def __init__(self, seat: Seat, request: Any, library: Library) -> None:
        start_janitor()  # where a dropped stream's seat is given back
        super().__init__(seat, request, library)

    def __iter__(self) -> Iterator[bytes]:
        seat = self._seat
        flight = seat.flight
        ready = partial(flight.next_data, seat)
        within = self._read_budget()
        while True:
            data = flight.wait(ready, within)
            if data is None:
                raise self._timed_out()
            if data is END:
                seat.leave()
                return
            if isinstance(data, BaseException):
                seat.leave()
                raise self._data_error(data)
            assert isinstance(data, bytes)
            yield data

    def close(self) -> None:
        self._seat.leave()


class _BodyStream:
    """A complete body, yielded once: iterating again after the end yields nothing, as
    for a live stream (the OpenAI SDK drains a stream again after ``[DONE]``)."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __iter__(self) -> Iterator[bytes]:
        body, self._body = self._body, None
        if body:
            yield body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body, self._body = self._body, None
        if body:
            yield body

    def close(self) -> None:
        self._body = None

    async def aclose(self) -> None:
        self._body = None


def extensions(head: Head, info: CoalesceInfo) -> dict[str, Any]:
    # Only what describes the response; never the leader's network stream.
    result: dict[str, Any] = {"coalesce": info}
    if head.http_version is not None:
        result["http_version"] = head.http_version
    if head.reason_phrase is not None:
        result["reason_phrase"] = head.reason_phrase
    return result


def build_response(library: Library, seat: Seat, head: Head, request: Any, is_async: bool) -> Any:
    flight = seat.flight
    info = CoalesceInfo(leader=seat.leader, callers=flight.joined, flight_id=flight.id)
    with flight.lock:
        body = flight.replay.body() if flight.replay.complete and flight.replay.whole else None
    if body is not None:
        # The body is all here (the usual case: a buffered response): the caller needs
        # no seat to read it, only the one shared bytes object.
        seat.leave()
        if seat.leader:
            upstream = flight.take_upstream_response()
            if (
                isinstance(upstream, library.Response)
                and not upstream.is_stream_consumed
                and not upstream.is_closed
            ):
                # The leader's own request was the one sent: it gets the very response
                # its transport made (cheaper than a copy), reading the shared body. (A
                # response its transport already read, as MockTransport's are, cannot be
                # streamed again: it gets a copy like everyone, which can.)
                upstream.stream = library.stream_class(_BodyStream, is_async)(body)
                upstream.extensions.pop("network_stream", None)  # its connection is gone
                upstream.extensions["coalesce"] = info
                return upstream
        stream = library.stream_class(_BodyStream, is_async)(body)
    else:
        cls = library.stream_class(_AsyncSeatStream if is_async else _SyncSeatStream, is_async)
        stream = cls(seat, request, library)
    return library.Response(
        head.status,
        headers=head.headers_in(library.module),
        stream=stream,
        request=request,
        extensions=extensions(head, info),
    )


def build_body_response(
    library: Library, head: Head, body: bytes, request: Any, info: CoalesceInfo, is_async: bool
) -> Any:
    """A response for a body already complete and owned by nobody (the window)."""
    return library.Response(
        head.status,
        headers=head.headers_in(library.module),
        stream=library.stream_class(_BodyStream, is_async)(body),
        request=request,
        extensions=extensions(head, info),
    )
