"""Every caller's own Response: its own stream over the shared replay, its own request,
its own errors.

The stream keeps the caller's read position (on its seat), so iterating it again after
the end yields nothing more, and a stream that is dropped unclosed still gives its seat
back when it is collected.
"""

from __future__ import annotations

import copy
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from ._flight import END, Abandoned, Seat, _End, _Pull
from ._library import Library
from ._replay import Head
from ._signal import Signal
from ._tasks import start_janitor
from ._upstream import pull_async, pull_sync

__all__ = ["CoalesceInfo", "build_response", "caller_error", "fresh_error"]

#: Asks the flight (under its lock) for a reader's next data: see ``Flight.next_data``.
_Ready = Callable[[], bytes | _End | _Pull | BaseException | None]


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


def fresh_error(
    template: BaseException, request: Any, library: Library, mid_body: bool = False
) -> BaseException:
    """A new exception like *template*, tied to *request*, in *request*'s library, with
    *template* (the real failure, traceback and all) as its cause.

    One exception object raised in many tasks would share (and grow) one traceback, and
    an SDK inspecting ``error.request`` must see its own request. The original is the
    leader's caller's alone: it is raised there, as it would have been without us.
    """
    cls = type(template)
    if not isinstance(template, Exception):
        # KeyboardInterrupt, SystemExit, a framework's abort, a CancelledError from
        # below: it ended the leader's call, but it is not this caller's to raise. The
        # caller gets a transport error, which its SDK's own retry policy handles as it
        # would a dropped connection; the transport itself never sends again.
        cls = library.module.ReadError if mid_body else library.module.TransportError
        error: BaseException = cls(
            f"the shared upstream call was stopped by {type(template).__name__} in the caller that sent it",
            request=request,
        )
        error.__cause__ = template
        return error
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
    error.__context__ = None
    error.__cause__ = template
    if isinstance(error, library.RequestError):
        error.request = request  # type: ignore[attr-defined]
    return error


def caller_error(template: BaseException, leader: bool, request: Any, library: Library) -> BaseException:
    """What a caller raises for its flight's failure: the leader's caller, whose request
    was sent, the failure itself; everyone else a fresh one caused by it."""
    if leader:
        return template
    return fresh_error(template, request, library)


#: How far above a seat stream's own frame httpx's ``Response.read()`` may be: its
#: ``iter_bytes()`` and ``iter_raw()``, the client's timing stream, a comprehension's
#: frame (before Python 3.12), and room for a wrapper of the caller's.
_READ_DEPTH = 8


def _reads_whole(library: Library) -> bool:
    """Whether the seat stream whose generator called this is being read by its
    Response's ``read()`` or ``aread()`` (directly, or through ``Client.send``).

    Such a caller sees no byte before the last: handing it the body whole, at the end,
    costs it nothing, and lets every such caller share one object. Any other reader
    sees the chunks as they come, and must get them so. Anything unknown (no frames on
    this Python, a read() replaced by a wrapper without code) reads live: correct,
    only less shared.
    """
    getframe = getattr(sys, "_getframe", None)
    if getframe is None:
        return False
    readers = {
        code
        for method in (getattr(library.Response, "read", None), getattr(library.Response, "aread", None))
        if (code := getattr(method, "__code__", None)) is not None
    }
    frame = getframe(1)  # the stream's generator
    for _ in range(_READ_DEPTH):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code in readers:
            return True
    return False


class _SeatStream:
    def __init__(self, seat: Seat, request: Any, library: Library) -> None:
        self._seat = seat
        self._request = request
        self._library = library
        self._finalizer: weakref.finalize[..., Any] | None = None
        if not seat.flight.replay.complete:
            # A live stream whose caller forgets to close it must not hold the flight.
            self._finalizer = weakref.finalize(self, seat.flight.table.leave_later, seat)

    def _leave(self) -> None:
        self._seat.leave()
        # Gone as it should: the finalizer (whose registry holds the seat, so the flight
        # and its error, whose traceback may hold this very stream) must not keep it alive.
        if self._finalizer is not None:
            self._finalizer.detach()

    def _begin(self) -> tuple[_Ready, float | None, Signal]:
        """Both faces start reading here (once a stream): what asks the flight for the
        next data, how long each wait may last, and what wakes the reader. Per chunk
        they only wait."""
        seat = self._seat
        flight = seat.flight
        # A follower waits for each chunk no longer than its own read timeout would let
        # it wait alone; the leader's reads already run under the leader's timeouts.
        within: float | None = None
        if not seat.leader:
            read = (self._request.extensions.get("timeout") or {}).get("read")
            within = None if read is None else float(read)
        reads_whole = _reads_whole(self._library)
        with flight.lock:
            flight.start_reading(seat, reads_whole)
            signal = flight.signal_for(seat)
        return partial(flight.next_data, seat), within, signal

    def _still_coming(self, size: int) -> bool:
        """A reader waiting for the whole body ran out of its read budget: whether bytes
        came meanwhile (alone, each of them would have reset its read timeout)."""
        return self._seat.whole and self._seat.flight.replay.size != size

    def _chunk(self, data: bytes | _End | BaseException | None) -> bytes | None:
        """What the reader does with what its wait gave: the chunk to yield, None at the
        end, or it raises. The one place both faces below decide; they only wait."""
        if isinstance(data, bytes):
            return data
        self._leave()
        if data is END:
            return None
        if data is None:
            raise self._library.module.ReadTimeout(
                "timed out waiting for the coalesced response's next bytes", request=self._request
            )
        assert isinstance(data, BaseException)
        if isinstance(data, Abandoned):
            raise self._library.module.ReadError(str(data), request=self._request)
        if self._seat.leader:
            raise data  # the leader's own request failed: its caller gets the failure itself
        raise fresh_error(data, self._request, self._library, mid_body=True)


class _AsyncSeatStream(_SeatStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        seat = self._seat
        flight = seat.flight
        replay = flight.replay
        ready, within, signal = self._begin()
        while True:
            size = replay.size
            data = await flight.wait_async(ready, within, signal if seat.whole else None)
            if isinstance(data, _Pull):
                if (pulled := await pull_async(flight, seat)) is not None:
                    yield pulled
                continue
            if data is None and self._still_coming(size):
                continue
            if (chunk := self._chunk(data)) is None:
                return
            yield chunk

    async def aclose(self) -> None:
        self._leave()


class _SyncSeatStream(_SeatStream):
    def __init__(self, seat: Seat, request: Any, library: Library) -> None:
        start_janitor()  # where a dropped stream's seat is given back
        super().__init__(seat, request, library)

    def __iter__(self) -> Iterator[bytes]:
        seat = self._seat
        flight = seat.flight
        replay = flight.replay
        ready, within, signal = self._begin()
        while True:
            size = replay.size
            data = flight.wait(ready, within, signal if seat.whole else None)
            if isinstance(data, _Pull):
                if (pulled := pull_sync(flight, seat)) is not None:
                    yield pulled
                continue
            if data is None and self._still_coming(size):
                continue
            if (chunk := self._chunk(data)) is None:
                return
            yield chunk

    def close(self) -> None:
        self._leave()


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


class _FollowerKit:
    """What the responses of a flight's followers are made of, made once for all of
    them answered in one library with one count of callers (all of them, when they
    joined before the answer came): the frozen ``CoalesceInfo`` (a frozen dataclass
    costs a call per field to make), the headers every Response copies, the extensions
    every Response copies too, and the stream class of a body already whole.

    (All of a flight's callers wait in one world, its table's: all async or all sync.)
    """

    __slots__ = ("body_stream", "callers", "extensions", "headers", "library")

    def __init__(self, library: Library, head: Head, callers: int, flight_id: str, is_async: bool) -> None:
        self.library = library
        self.callers = callers
        self.headers = head.headers_in(library.module)
        self.extensions = extensions(head, CoalesceInfo(leader=False, callers=callers, flight_id=flight_id))
        self.body_stream = library.stream_class(_BodyStream, is_async)


def build_response(library: Library, seat: Seat, head: Head, request: Any, is_async: bool) -> Any:
    flight = seat.flight
    if not seat.leader:
        kit = flight.follower_kit
        if kit is None or kit.callers != flight.joined or kit.library is not library:
            kit = flight.follower_kit = _FollowerKit(library, head, flight.joined, flight.id, is_async)
        stream = _stream_of(library, seat, request, is_async, kit.body_stream)
        return library.Response(
            head.status, headers=kit.headers, stream=stream, request=request, extensions=kit.extensions
        )
    info = CoalesceInfo(leader=True, callers=flight.joined, flight_id=flight.id)
    upstream = flight.take_upstream_response()
    if isinstance(upstream, library.Response):
        # The leader's own request was the one sent: it gets the very response its
        # transport made (headers, extensions and all, as alone).
        if hasattr(upstream, "_content"):
            # Already read by its transport (MockTransport's and respx's content=,
            # a cache's): it serves read() and iter_bytes() from its content, as
            # alone, and needs no seat to read the shared body.
            seat.leave()
            upstream.extensions["coalesce"] = info
            return upstream
        if not upstream.is_stream_consumed and not upstream.is_closed:
            upstream.stream = _stream_of(library, seat, request, is_async)
            upstream.extensions["coalesce"] = info
            return upstream
    return library.Response(
        head.status,
        headers=head.headers_in(library.module, True),
        stream=_stream_of(library, seat, request, is_async),
        request=request,
        extensions=extensions(head, info),
    )


def _stream_of(
    library: Library, seat: Seat, request: Any, is_async: bool, body_stream: type[Any] | None = None
) -> Any:
    """The caller's own stream over the shared body (*body_stream*: the stream class of
    a whole body, where the caller has it already)."""
    flight = seat.flight
    body = flight.take_body(seat)
    if body is not None:
        # The body is all here (the usual case: a buffered response): the caller needs
        # no seat to read it, only the one shared bytes object.
        if body_stream is None:
            body_stream = library.stream_class(_BodyStream, is_async)
        return body_stream(body)
    cls = library.stream_class(_AsyncSeatStream if is_async else _SyncSeatStream, is_async)
    return cls(seat, request, library)


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
