"""CoalescingTransport: the face httpx and httpx2 clients see, sync and async."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from ._backend import AsyncSend, Backend, SyncSend, bind_backend
from ._flight import Abandoned, Flight, FlightTable, Seat
from ._hishel import keyed_per_credential
from ._key import DEFAULT_IGNORED_HEADERS, KeyFunction, KeyRules, is_credential
from ._library import Library, library_of
from ._limits import Limits
from ._replay import Head
from ._request import HeaderRoles, Inspection, body_in_memory, inspect, request_parts, url_parts
from ._response import CoalesceInfo, build_body_response, build_response, caller_error
from ._signal import ThreadSignal
from ._stats import BYPASSED, JOINED, LED, WINDOW, CoalesceStats, Counters
from ._tasks import current_loop, running_loop, spawn_detached
from ._telemetry import connect
from ._upstream import lead_sync, pump_async
from ._usage import MAX_PARSED, Tokens, tokens_in
from ._window import Window, WindowEntry, shareable_later

if TYPE_CHECKING:
    import httpx
    import httpx2
    from opentelemetry.metrics import MeterProvider

    # For type checkers the transport is a transport of both libraries; at run time
    # it serves them through duck typing, as clients use their transports: inheriting
    # from httpx would mean importing it, which httpx2.alias_httpx() forbids before it
    # is called (see _library).
    class _Bases(  # type: ignore[misc]
        httpx.BaseTransport, httpx.AsyncBaseTransport, httpx2.BaseTransport, httpx2.AsyncBaseTransport
    ):
        pass
else:

    class _Bases:
        pass


__all__ = ["DEFAULT_METHODS", "CoalescingTransport"]

logger = logging.getLogger("httpx_coalesce")

#: Methods that coalesce unless told otherwise. POST is why this library exists.
DEFAULT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "POST"})


class CoalescingTransport(_Bases):
    """A transport that sends identical in-flight requests upstream once.

    Every caller gets its own response (own stream, same status, headers and body),
    buffered or streamed live. The key and bypass rules: docs/key.md.
    """

    def __init__(
        self,
        transport: Any = None,
        *,
        methods: Collection[str] = DEFAULT_METHODS,
        ignore_headers: Collection[str] = DEFAULT_IGNORED_HEADERS,
        ignore_json_fields: Collection[str] = (),
        key: KeyFunction | None = None,
        backend: Backend | None = None,
        window: float = 0.0,
        limits: Limits | None = None,
        opt_out_header: str = "x-coalesce",
        meter_provider: MeterProvider | None = None,
        telemetry: bool = True,
    ) -> None:
        # Every argument is checked before anything is stored: a wrong one met at the
        # first request reads as an unrelated error far from its cause, or as nothing
        # at all (methods="POST" would mean the methods P, O, S and T).
        from ._options import (
            check_backend,
            check_ignore_headers,
            check_key,
            check_limits,
            check_meter_provider,
            check_methods,
            check_names,
            check_opt_out_header,
            check_telemetry,
            check_transport,
            check_window,
            warn_kept_credentials,
        )

        transport = check_transport(transport)
        checked_methods = check_methods(methods)
        ignored_headers = check_ignore_headers(ignore_headers)
        ignored_fields = check_names(ignore_json_fields, "ignore_json_fields")
        key = check_key(key)
        backend = check_backend(backend)
        seconds = check_window(window)
        checked_limits = check_limits(limits)
        opt_out_name = check_opt_out_header(opt_out_header)
        provider = check_meter_provider(meter_provider)
        use_telemetry = check_telemetry(telemetry, provider)
        # Pointing at the caller of CoalescingTransport(...): 1 is the warning's own
        # function, 2 this __init__.
        warn_kept_credentials(ignored_headers, stacklevel=3)
        # hishel's cache keyed per credential, as this transport's flights are.
        self._transport = keyed_per_credential(transport)
        self._methods = checked_methods
        self._rules = KeyRules(ignored_headers, ignored_fields)
        self._key_function = key
        self._limits = checked_limits
        # The default key's ignore rules are applied as the headers are read.
        self._header_roles = HeaderRoles(opt_out_name, self._rules.keeps if key is None else None)
        self._window = Window(seconds, self._limits.window_entries, self._limits.window_bytes)
        self._counters = Counters()
        # Metrics through *provider*, else the global MeterProvider (see _telemetry).
        if use_telemetry:
            connect(self._counters.recorder, provider, self, CoalescingTransport._load)
        self._defaults: dict[tuple[str, bool], Any] = {}
        self._defaults_lock = threading.Lock()
        self._sync_table = FlightTable(self._limits, self._counters, ThreadSignal, self._finished)
        self._async_tables: weakref.WeakKeyDictionary[object, FlightTable] = weakref.WeakKeyDictionary()
        self._last_async_table: tuple[weakref.ref[asyncio.AbstractEventLoop], FlightTable] | None = None
        self._body_pumps: concurrent.futures.ThreadPoolExecutor | None = None
        self._backend = backend
        if backend is not None:
            bind_backend(backend, self._counters, self._limits, seconds)

    # -- what a client calls ------------------------------------------------------------

    @overload
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...
    @overload
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response: ...
    async def handle_async_request(self, request: Any) -> Any:
        library, key = self._begin(request)
        if key is not None:
            # The request loop (see _next): the faces differ only in how they lead a
            # flight and wait for it.
            seat = self._first_seat(request, library, key, is_async=True)
            while isinstance(seat, Seat):
                flight = seat.flight
                if seat.leader:
                    send = self._async_sender(library, key, flight)
                    try:
                        cancel = spawn_detached(partial(pump_async, flight, send, request, self._limits))
                    except Exception:
                        # No task, no answer: its callers must not wait for one.
                        flight.abandon()
                    else:
                        if not flight.set_canceller(cancel):
                            cancel()
                try:
                    outcome = await flight.outcome_async(_budget(seat, request))
                except BaseException:
                    self._left_waiting(seat, request)
                    raise
                seat = self._next(seat, outcome, request, library, is_async=True)
            if seat is not _PASS_THROUGH:
                return seat
        self._counters.upstream(request)
        return await self._inner(library, is_async=True).handle_async_request(request)

    @overload
    def handle_request(self, request: httpx.Request) -> httpx.Response: ...
    @overload
    def handle_request(self, request: httpx2.Request) -> httpx2.Response: ...
    def handle_request(self, request: Any) -> Any:
        library, key = self._begin(request)
        if key is not None:
            seat = self._first_seat(request, library, key, is_async=False)
            while isinstance(seat, Seat):
                flight = seat.flight
                if seat.leader:
                    # Sent from this very thread, as alone: the inner transport sees this
                    # caller's thread, its thread-locals and its contextvars.
                    lead_sync(
                        flight,
                        self._sync_sender(library, key, flight),
                        request,
                        self._limits,
                        self._pump_body,
                    )
                try:
                    outcome = flight.wait(flight.outcome, _budget(seat, request))
                except BaseException:
                    self._left_waiting(seat, request)
                    raise
                seat = self._next(seat, outcome, request, library, is_async=False)
            if seat is not _PASS_THROUGH:
                return seat
        self._counters.upstream(request)
        return self._inner(library, is_async=False).handle_request(request)

    # -- the request loop, one piece of code for both faces ----------------------------
    #
    # Each face takes its caller's first seat, then, while it holds a seat, leads the
    # flight if the seat is the leader's, waits for the outcome and asks _next what
    # comes of it: the response, an error raised, another seat (at most one more), or
    # _PASS_THROUGH, which sends the request alone. (Plain calls rather than one
    # generator both faces drive: making, resuming and ending a generator cost a
    # follower more than the rest of its loop.)

    def _first_seat(self, request: Any, library: Library, key: str, is_async: bool) -> Any:
        """A seat in the flight of *key*, a response from the window, or _PASS_THROUGH."""
        table = self._async_table() if is_async else self._sync_table
        return self._enter(table, key, request, library, 1, is_async)

    def _next(
        self, seat: Seat, outcome: Head | BaseException | None, request: Any, library: Library, is_async: bool
    ) -> Any:
        """What comes of *seat*'s outcome: the response, an error raised, the seat of a
        second attempt, or _PASS_THROUGH."""
        attempt = seat.attempt
        settled = self._settle(seat, outcome, request, library, attempt, is_async)
        if settled is not _RETRY:
            return settled
        table = self._async_table() if is_async else self._sync_table
        entered = self._enter(table, seat.flight.key, request, library, attempt + 1, is_async)
        if isinstance(entered, Seat):
            entered.attempt = attempt + 1
        return entered

    def _left_waiting(self, seat: Seat, request: Any) -> None:
        """The wait raised (the caller's cancellation, its KeyboardInterrupt): it leaves."""
        seat.leave()
        _count_seated(self._counters, seat, request)

    def _begin(self, request: Any) -> tuple[Library, str | None]:
        """What both faces do first: the request's library, and its key (None: it
        passes through, already counted)."""
        recorder = self._counters.recorder
        probe = recorder.probe
        # OpenTelemetry is here, but no MeterProvider yet: has one been set since?
        if probe is not None and probe() is not None:
            recorder.found()
        library = library_of(request)
        return library, self._key_of(request)

    def _enter(
        self, table: FlightTable, key: str, request: Any, library: Library, attempt: int, is_async: bool
    ) -> Any:
        """A seat in the flight of *key*, a response from the window, or _PassThrough."""
        if attempt == 1 and self._window.seconds > 0:  # no window: no look-up
            served = self._from_window(key, request, library, is_async)
            if served is not None:
                return served
        joined = table.join(key)
        if isinstance(joined, str):
            self._counters.request(BYPASSED, request, joined)
            return _PASS_THROUGH
        if joined.leader:
            joined.flight.timeout = request.extensions.get("timeout")
            joined.flight.url = request.url
        return joined

    def _settle(
        self,
        seat: Seat,
        outcome: Head | BaseException | None,
        request: Any,
        library: Library,
        attempt: int,
        is_async: bool,
    ) -> Any:
        """What a caller does with its flight's outcome: answer, raise, retry or go alone."""
        if outcome is None:
            # Its wait ran out: an answer that came in the same moment still counts.
            flight = seat.flight
            with flight.lock:
                outcome = flight.outcome()
        if isinstance(outcome, Head):
            # _count_seated's, written out: every caller that gets an answer comes here.
            flight = seat.flight
            leader = seat.leader
            self._counters.request(
                LED if leader else JOINED, request, None, flight.id, flight.joined, not leader
            )
            return build_response(library, seat, outcome, request, is_async)
        seat.leave()
        if outcome is None:
            # This caller's own timeouts ran out first; the flight goes on for the others.
            _count_seated(self._counters, seat, request)
            raise library.module.ReadTimeout("timed out waiting for the coalesced response", request=request)
        if isinstance(outcome, Abandoned) or (
            _is_timeout(outcome) and request.extensions.get("timeout") != seat.flight.timeout
        ):
            # Not an answer this caller would have had alone: the flight stopped for a
            # reason of its own, or ran out of the leader's timeouts, not this caller's.
            if attempt < _LAST_ATTEMPT:
                return _RETRY
            self._counters.request(BYPASSED, request, "abandoned")
            return _PASS_THROUGH
        _count_seated(self._counters, seat, request)
        raise caller_error(outcome, seat.leader, request, library)

    # -- seeing what it does ------------------------------------------------------------

    def stats(self) -> CoalesceStats:
        """A snapshot of the counters, and what is in flight right now."""
        in_flight, waiters = self._load()
        return self._counters.snapshot(in_flight=in_flight, waiters=waiters)

    def _load(self) -> tuple[int, int]:
        """Flights in flight now, and the callers attached to them."""
        in_flight = waiters = 0
        for table in [self._sync_table, *list(self._async_tables.values())]:
            flights, seats = table.load()
            in_flight += flights
            waiters += seats
        return in_flight, waiters

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        # The worker pool is left running: a transport may be shared by several clients,
        # and idle workers cost nothing; they end with the interpreter.
        for inner in self._inners():
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        for inner in self._inners():
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()
            elif hasattr(inner, "close"):
                inner.close()

    # The context-manager methods go to the inner transport's own, as an httpx client's
    # go to its mounted transports: a transport may do more on exit than close.

    def __enter__(self) -> CoalescingTransport:
        for inner in self._inners():
            enter = getattr(inner, "__enter__", None)
            if enter is not None:
                enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._backend is not None:
            self._backend.close()
        for inner in self._inners():
            exit_ = getattr(inner, "__exit__", None)
            if exit_ is not None:
                exit_(exc_type, exc_value, traceback)
            elif hasattr(inner, "close"):
                inner.close()

    async def __aenter__(self) -> CoalescingTransport:
        for inner in self._inners():
            aenter = getattr(inner, "__aenter__", None)
            if aenter is not None:
                await aenter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        for inner in self._inners():
            aexit = getattr(inner, "__aexit__", None)
            if aexit is not None:
                await aexit(exc_type, exc_value, traceback)
            elif hasattr(inner, "aclose"):
                await inner.aclose()
            elif hasattr(inner, "close"):
                inner.close()

    # -- internals ----------------------------------------------------------------------

    def _key_of(self, request: Any) -> str | None:
        """The request's key, or None (counted as bypassed) if it must pass through."""
        inspection = inspect(request, self._methods, self._header_roles)
        reason = inspection.reason
        if reason is None:
            body = body_in_memory(request)
            if body is None:
                # Reading a body the caller streams would change what the inner transport
                # gets: a one-shot body made replayable, a file moved. It goes as it is.
                reason = "streamed_body"
            elif len(body) > self._limits.max_request_bytes:
                reason = "body_too_large"
            else:
                return self._key(request, inspection, body)
        self._counters.request(BYPASSED, request, reason)
        return None

    def _key(self, request: Any, inspection: Inspection, body: bytes) -> str:
        if self._key_function is None:
            scheme, host, port, target = url_parts(request)
            lines = inspection.lines
            if lines is not None:
                return self._rules.digest_lines(
                    request.method, scheme, host, port, target, lines, body, inspection.content_type
                )
            make = self._rules.digest if inspection.filtered else self._rules.key_of
            return make(
                request.method, scheme, host, port, target, inspection.headers, body, inspection.content_type
            )
        parts = request_parts(request, inspection, body)
        # A key of the user's own still never lets two tenants share.
        digest = hashlib.blake2b(self._key_function(parts).encode(), digest_size=20)
        for name, value in parts.headers:
            if is_credential(name):
                digest.update(f"\0{name}:{value}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def _async_sender(self, library: Library, key: str, flight: Flight) -> AsyncSend:
        """How the leader of *key* gets its response: upstream, or through the backend."""
        inner = self._inner(library, is_async=True)
        counters = self._counters
        backend = self._backend
        sent = False

        async def send(request: Any) -> Any:
            nonlocal sent
            sent = True
            counters.upstream(request)
            return await inner.handle_async_request(request)

        if backend is None:
            return send

        async def through_backend(request: Any) -> Any:
            response = await backend.send_async(key, request, library, send)
            # A backend answer that never went upstream from here came from another
            # process: this flight's leader saved its call as well as its followers.
            flight.answered_elsewhere = not sent
            return response

        return through_backend

    def _sync_sender(self, library: Library, key: str, flight: Flight) -> SyncSend:
        inner = self._inner(library, is_async=False)
        counters = self._counters
        backend = self._backend
        sent = False

        def send(request: Any) -> Any:
            nonlocal sent
            sent = True
            counters.upstream(request)
            return inner.handle_request(request)

        if backend is None:
            return send

        def through_backend(request: Any) -> Any:
            response = backend.send_sync(key, request, library, send)
            flight.answered_elsewhere = not sent
            return response

        return through_backend

    def _inner(self, library: Library, is_async: bool) -> Any:
        if self._transport is not None:
            return self._transport
        inner = self._defaults.get((library.name, is_async))
        if inner is None:
            with self._defaults_lock:
                inner = self._defaults.get((library.name, is_async))
                if inner is None:
                    inner = (
                        library.default_async_transport() if is_async else library.default_sync_transport()
                    )
                    self._defaults[(library.name, is_async)] = inner
        return inner

    def _inners(self) -> list[Any]:
        return [self._transport] if self._transport is not None else list(self._defaults.values())

    def _async_table(self) -> FlightTable:
        # Most programs run one event loop: its table is found without a look-up.
        last = self._last_async_table
        if last is not None:
            running = running_loop()
            if running is not None and last[0]() is running:
                return last[1]
        loop, make_signal, run_soon = current_loop()
        table = self._async_tables.get(loop)
        if table is None:
            table = FlightTable(
                self._limits, self._counters, lambda lock: make_signal(), self._finished, run_soon
            )
            self._async_tables[loop] = table
        if isinstance(loop, asyncio.AbstractEventLoop):
            self._last_async_table = (weakref.ref(loop), table)
        return table

    def _pump_body(self, job: Callable[[], None]) -> None:
        """Run *job* (a live body's pump) in a worker thread.

        (Not ``_pool``: tools and SDK test helpers read that name on httpx transports.)
        """
        executor = self._body_pumps
        if executor is None:
            with self._defaults_lock:
                executor = self._body_pumps
                if executor is None:
                    executor = self._body_pumps = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._limits.max_flights, thread_name_prefix="httpx-coalesce"
                    )
        try:
            executor.submit(job)
        except RuntimeError:
            # No thread to be had (the interpreter is shutting down): the body is pumped
            # here, before the leader returns, rather than sent again or lost.
            job()

    def _from_window(self, key: str, request: Any, library: Library, is_async: bool) -> Any:
        entry = self._window.get(key)
        if entry is None:
            return None
        self._counters.request(WINDOW, request, flight_id=entry.flight_id)
        self._counters.saved(len(entry.body), entry.tokens)
        if entry.tokens.total:
            self._counters.pricer.window_saved(key)
        info = CoalesceInfo(leader=False, callers=0, flight_id=entry.flight_id, from_window=True)
        return build_body_response(library, entry.head, entry.body, request, info, is_async)

    def _finished(self, flight: Flight) -> None:
        """A flight's body is complete: count what sharing saved, keep it for the window."""
        head = flight.head
        # Calls not made: one per follower, and the leader's own when another process
        # answered it (a fleet leader, or the fleet window).
        saved = flight.joined - 1 + flight.answered_elsewhere
        if head is None or (saved <= 0 and self._window.seconds <= 0):
            return  # nothing shared, nothing kept: the path that does not coalesce
        replay = flight.replay
        window = replay.whole and self._window.seconds > 0 and shareable_later(head)
        if saved <= 0 and not window:
            return
        logger.debug("flight %s shared by %d callers", flight.id, flight.joined)
        # Joining the body is a copy of it, held as long as the flight: only for what
        # needs it whole (the window, or token counts, which only small bodies get).
        body: bytes | None = None
        tokens: Tokens | None = None
        if replay.whole and (window or replay.size <= MAX_PARSED):
            body = replay.body()
            tokens = tokens_in(body, head.header(b"content-type") or b"")
        if saved > 0:
            self._counters.saved(replay.size * saved, None if tokens is None else tokens.times(saved))
        if body is not None and tokens is not None and tokens.total:
            # Priced in a worker: a flight may end on the event loop or in a caller's read.
            content_type = head.header(b"content-type") or b""
            self._counters.pricer.flight_saved(flight.key, body, content_type, flight.url, max(0, saved))
        if window and body is not None and tokens is not None:
            entry = WindowEntry(head, body, flight.id, tokens, time.monotonic() + self._window.seconds)
            self._window.put(flight.key, entry)


class _Retry:
    """Join the table again: the flight ended without an answer meant for this caller."""


class _PassThrough:
    """Send this request upstream alone."""


_RETRY = _Retry()
_PASS_THROUGH = _PassThrough()
#: A caller joins at most twice: a second flight that also fails it sends it alone.
_LAST_ATTEMPT = 2
_TIMEOUTS = frozenset({"ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout"})


def _count_seated(counters: Counters, seat: Seat, request: Any, coalesced: bool = False) -> None:
    """A caller that held a seat has its outcome: it led the flight, or joined it."""
    flight = seat.flight
    counters.request(
        LED if seat.leader else JOINED,
        request,
        flight_id=flight.id,
        callers=flight.joined,
        coalesced=coalesced,
    )


def _is_timeout(error: BaseException) -> bool:
    return type(error).__name__ in _TIMEOUTS


def _budget(seat: Seat, request: Any) -> float | None:
    """How long *seat*'s caller may wait for the head. The leader needs no deadline of
    its own: the upstream call runs under its timeouts."""
    return None if seat.leader else _head_budget(request)


def _head_budget(request: Any) -> float | None:
    """How long a follower may wait for the head: what its request alone could have taken."""
    timeout = request.extensions.get("timeout")
    try:
        budget = timeout["pool"] + timeout["connect"] + timeout["write"] + timeout["read"]
    except (TypeError, KeyError):  # no timeouts, one of them None (no limit), or one missing
        return None
    return float(budget)
