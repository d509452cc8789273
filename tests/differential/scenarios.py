"""A scenario, run alone (the bare inner transport under the client) and coalesced
(``CoalescingTransport(transport=inner)``), and everything its callers could observe.

A scenario is a client library, a runtime, what the server answers, what the inner
transport does, a request body and whether the caller streams the response. ``run``
plays it with one caller or with several identical callers that overlap in time, each
with a client of its own, in a thread of its own (sync) or a task of its own (asyncio,
trio), and returns what each caller saw and what the inner transport got. The two runs
of one scenario are compared as plain values, so a difference shows as a field.

Overlap and timing come from gates the test opens (see ``server.py``), never from
sleeping: the server holds the head until every caller has joined, or sends the head and
holds the body until every caller has its headers. Every wait is bounded: a caller that
hangs is reported as hung, and nothing a scenario raises (KeyboardInterrupt included)
leaves the runner.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
import traceback as tracebacks
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import httpx2

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._stats import CoalesceStats

from ..support.ports import free_port
from . import recording
from .recording import LOCAL, TENANT, Fault, Recorder, forwarding_transport, recording_transport
from .server import DifferentialServer, Gate

__all__ = [
    "BOUND",
    "LIBRARIES",
    "RUNTIMES",
    "Abort",
    "CallerSeen",
    "ErrorSeen",
    "Outcome",
    "Route",
    "Scenario",
    "run",
]

LIBRARIES: dict[str, ModuleType] = {"httpx": httpx, "httpx2": httpx2}
RUNTIMES = ("sync", "asyncio", "trio")
#: No caller may take longer than this; past it, it is reported as hung.
BOUND = 15.0
#: How long a caller may wait for headers while the server holds the body. Only a
#: failing run waits this long: a passing one gets its headers in milliseconds.
HEAD_WAIT = 1.5
#: How long to wait for every caller to have joined one flight.
JOIN_WAIT = 3.0

#: Body bytes of the request kinds, and where a file upload starts reading.
BODY_PARTS = (b"first part, ", b"second part")
#: Where the "file-offset" kind starts reading. (httpx sends a Content-Length of the
#: whole file, so alone that request fails; coalesced it must fail just the same.)
FILE_OFFSET = 3
BOUNDARY = "differential-boundary"
#: Body kinds not already in memory: they must pass through, unread.
STREAMED_BODIES = frozenset({"generator", "file", "file-offset", "multipart"})
#: Body kinds a sync client only can send (an async one takes files as multipart).
SYNC_ONLY_BODIES = frozenset({"file", "file-offset"})
#: Known length past the 16 KiB a transport may read whole before handing out headers.
LARGE = 64 * 1024
#: Known length under that bound.
SMALL = 8 * 1024


class Abort(BaseException):
    """A framework's own abort signal, built on BaseException."""


class Leaving(Exception):
    """Raised by a caller inside its client's ``with`` block, to see what ``__exit__`` gets."""


def make_error(kind: str, lib: ModuleType) -> BaseException:
    """A new exception of *kind* (each run raises an object of its own)."""
    if kind == "connect_error":
        error: BaseException = lib.ConnectError("injected: connection refused")
    elif kind == "read_error":
        error = lib.ReadError("injected: connection lost")
    elif kind == "abort":
        error = Abort("injected abort")
    elif kind == "keyboard_interrupt":
        error = KeyboardInterrupt("injected interrupt")
    elif kind == "system_exit":
        error = SystemExit(3)
    elif kind == "cancelled":
        error = asyncio.CancelledError("injected: cancelled from below")
    else:
        raise ValueError(kind)
    return error


BASE_EXCEPTIONS = ("abort", "keyboard_interrupt", "system_exit", "cancelled")


def base_exceptions_on(runtime: str) -> list[str]:
    """The BaseException kinds a run on *runtime* is given: a CancelledError only on asyncio."""
    return [kind for kind in BASE_EXCEPTIONS if kind != "cancelled" or runtime == "asyncio"]


#: (lib, runtime, kind) for every library, runtime and BaseException kind it is given.
BASE_EXCEPTION_CASES = [
    (lib, runtime, kind) for lib in LIBRARIES for runtime in RUNTIMES for kind in base_exceptions_on(runtime)
]


@dataclass(frozen=True)
class Route:
    """What the server answers."""

    #: Body size (0: the document describing the request, about 150 bytes).
    size: int = 0
    #: "length" (a Content-Length), "chunked" or "sse" (chunked event stream).
    mode: str = "length"
    #: Hold the whole answer until the request has arrived (and every caller joined).
    slow: bool = False
    #: Send the head and a first part, hold the rest until every caller has its head
    #: (only when the caller streams: otherwise nobody could see the head first).
    hold_body: bool = False
    #: Close the connection after this many body bytes.
    cut: int | None = None
    cookie: bool = False
    #: Answer 307 first, to the same URL's ``/echo``.
    redirect: bool = False


@dataclass(frozen=True)
class Scenario:
    lib: str
    runtime: str
    route: Route = Route()
    #: "none" (a GET), "bytes", "json", "generator", "file" and "file-offset" (a file
    #: object, at its start or past it: sync only), "multipart" (with a file).
    body: str = "json"
    stream: bool = False
    #: What the inner transport raises (see ``make_error``), and when: "send",
    #: "head", or after that many body bytes.
    fault: str | None = None
    fault_at: str | int = "send"
    #: Nothing listens at the URL: the real transport fails to connect.
    refused: bool = False
    #: The caller raises ``Leaving`` inside its client's ``with`` block.
    leave_with_error: bool = False
    #: Extra request headers.
    headers: tuple[tuple[str, str], ...] = ()
    #: The inner transport is seen through a forwarding transport of the other library's
    #: classes (see ``recording.forwarding_transport``).
    forwarded_by_other_library: bool = False

    @property
    def is_async(self) -> bool:
        return self.runtime != "sync"

    @property
    def module(self) -> ModuleType:
        return LIBRARIES[self.lib]


# -- what a caller sees ---------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorSeen:
    type: type[BaseException]
    message: str
    #: "send" (from send/post/stream entry) or "read" (reading the body).
    where: str
    #: Its ``request``: "own", "other", "unset", or "none" (no RequestError).
    request: str
    #: It is the very object the inner transport raised.
    is_inner_original: bool
    #: Its ``__cause__`` is an object the inner transport raised.
    cause_is_inner_original: bool
    #: Its traceback runs through the inner transport.
    traceback_through_inner: bool


@dataclass(frozen=True)
class CallerSeen:
    status: int | None
    headers: tuple[tuple[bytes, bytes], ...] | None
    #: The body (summed up past 512 bytes).
    body: bytes | str | None
    #: Response extensions but ``coalesce`` (ours); ``network_stream`` by its type, as
    #: each run has a connection of its own.
    extensions: tuple[tuple[str, Any], ...] | None
    cookies: tuple[tuple[str, str], ...]
    error: ErrorSeen | None
    #: With the body held by the server: the headers came back before it was let go.
    headers_before_body: bool | None
    #: ``response.extensions.get("coalesce")``: not compared, checked on its own.
    coalesce: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class InnerSeen:
    """One call the inner transport got; callers are named by their index."""

    request_of: int
    stream_of: int
    headers: tuple[tuple[bytes, bytes], ...]
    body_in_memory: bool
    stream_consumed: bool | None
    probe: object
    tenant: str
    local: str | None
    #: Sync only: the caller whose thread it ran in (-1: none of them).
    thread_of: int | None


@dataclass(frozen=True)
class RunSeen:
    callers: tuple[CallerSeen, ...]
    inner: tuple[InnerSeen, ...]
    #: What the inner transport's enter/exit/close calls got; an exception argument is
    #: named by the index of the caller that saw it.
    lifecycle: tuple[tuple[Any, ...], ...]
    #: Exceptions that left the runtime (asyncio.run, trio.run, a thread) or reached the
    #: event loop's exception handler.
    escaped: tuple[str, ...]
    hung: bool


@dataclass
class Outcome:
    seen: RunSeen
    recorder: Recorder
    callers: list[Caller]
    transport: Any
    stats: CoalesceStats | None


# -- playing a scenario ---------------------------------------------------------------------


class _Body:
    """A request body of one kind, made fresh for each caller."""

    def __init__(self, kind: str, is_async: bool, upload: Path) -> None:
        self.kwargs: dict[str, Any] = {}
        self.pulled: list[bytes] = []
        self._file: Any = None
        if kind == "bytes":
            self.kwargs["content"] = b"".join(BODY_PARTS)
        elif kind == "json":
            self.kwargs["json"] = {"q": "same", "n": 1}
        elif kind == "generator":
            self.kwargs["content"] = self._agen() if is_async else self._gen()
        elif kind in {"file", "file-offset"}:
            self._file = upload.open("rb")
            self._file.seek(FILE_OFFSET if kind == "file-offset" else 0)
            self.kwargs["content"] = self._file
        elif kind == "multipart":
            self._file = upload.open("rb")
            self.kwargs["files"] = {"upload": ("upload.txt", self._file, "text/plain")}
            self.kwargs["data"] = {"field": "value"}
            self.kwargs["headers"] = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        elif kind != "none":
            raise ValueError(kind)

    def _gen(self) -> Iterator[bytes]:
        for part in BODY_PARTS:
            self.pulled.append(part)
            yield part

    async def _agen(self) -> AsyncIterator[bytes]:
        for part in BODY_PARTS:
            self.pulled.append(part)
            yield part

    def probe(self) -> object:
        """How much of the body was read: chunks pulled, or the file's position."""
        if self._file is not None:
            return ("file position", self._file.tell())
        return ("chunks pulled", len(self.pulled))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class Caller:
    index: int
    body: _Body
    head_seen: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    request: Any = None
    stream: Any = None
    thread: threading.Thread | None = None
    response: Any = None
    error: BaseException | None = None
    where: str = "send"
    cookies: tuple[tuple[str, str], ...] = ()
    headers_before_body: bool | None = None


@functools.cache
def _refused_port() -> int:
    # One for the whole session: both runs of a scenario send the same Host header.
    return free_port()


class _Run:
    def __init__(self, scenario: Scenario, server: DifferentialServer, upload: Path, callers: int) -> None:
        self.scenario = scenario
        self.lib = scenario.module
        route = scenario.route
        self.head_gate: Gate | None = server.gate() if route.slow else None
        self.body_gate: Gate | None = server.gate() if route.hold_body and scenario.stream else None
        base = f"http://127.0.0.1:{_refused_port()}" if scenario.refused else server.url
        query = server.query(
            size=route.size,
            mode=route.mode,
            cut=route.cut,
            cookie=route.cookie,
            head_gate=self.head_gate,
            body_gate=self.body_gate,
        )
        self.url = f"{base}/{'redirect' if route.redirect else 'echo'}?{query}"
        self.method = "GET" if scenario.body == "none" else "POST"
        self.callers = [
            Caller(index, _Body(scenario.body, scenario.is_async, upload)) for index in range(callers)
        ]
        fault = None
        if scenario.fault is not None:
            fault = Fault(make_error(scenario.fault, self.lib), scenario.fault_at)
        self.inner, self.recorder = recording_transport(
            self.lib, scenario.is_async, fault=fault, probe=self._probe
        )
        if scenario.forwarded_by_other_library:
            other = next((module for module in LIBRARIES.values() if module is not self.lib), self.lib)
            self.inner = forwarding_transport(self.inner, other, scenario.is_async)

    def _probe(self, request: Any) -> object:
        # The caller whose request (or request stream: a redirect keeps it) is sent.
        for caller in self.callers:
            if request is caller.request or (caller.stream is not None and request.stream is caller.stream):
                return caller.body.probe()
        if len(self.callers) == 1:
            return self.callers[0].body.probe()
        return "a request of no caller"

    def request_kwargs(self, caller: Caller) -> dict[str, Any]:
        kwargs = dict(caller.body.kwargs)
        headers = dict(kwargs.pop("headers", {}))
        headers.update(self.scenario.headers)
        if headers:
            kwargs["headers"] = headers
        return kwargs

    def built(self, caller: Caller, request: Any) -> None:
        caller.request = request
        caller.stream = request.stream

    def saw_head(self, caller: Caller) -> None:
        if self.body_gate is not None:
            caller.headers_before_body = not self.body_gate.opened.is_set()
        caller.head_seen.set()

    def client_options(self) -> dict[str, Any]:
        return {"follow_redirects": self.scenario.route.redirect}


def _call_sync(run: _Run, caller: Caller, transport: Any) -> None:
    TENANT.set(f"caller-{caller.index}")
    LOCAL.value = f"local-{caller.index}"
    caller.thread = threading.current_thread()
    client = run.lib.Client(transport=transport, **run.client_options())
    try:
        with client:
            request = client.build_request(run.method, run.url, **run.request_kwargs(caller))
            run.built(caller, request)
            caller.response = client.send(request, stream=run.scenario.stream)
            run.saw_head(caller)
            caller.where = "read"
            if run.scenario.stream:
                try:
                    caller.response.read()
                finally:
                    caller.response.close()
            if run.scenario.leave_with_error:
                raise Leaving("left the block")
    except BaseException as error:
        caller.error = error
    finally:
        caller.body.close()
        caller.cookies = tuple(sorted(client.cookies.items()))
        caller.done.set()


async def _call_async(run: _Run, caller: Caller, transport: Any) -> None:
    TENANT.set(f"caller-{caller.index}")
    client = run.lib.AsyncClient(transport=transport, **run.client_options())
    try:
        async with client:
            request = client.build_request(run.method, run.url, **run.request_kwargs(caller))
            run.built(caller, request)
            caller.response = await client.send(request, stream=run.scenario.stream)
            run.saw_head(caller)
            caller.where = "read"
            if run.scenario.stream:
                try:
                    await caller.response.aread()
                finally:
                    await caller.response.aclose()
            if run.scenario.leave_with_error:
                raise Leaving("left the block")
    except BaseException as error:
        # Everything, cancellation included: what the caller saw is what is compared,
        # and a run that overran its bound is reported as hung by the driver.
        caller.error = error
    finally:
        caller.body.close()
        caller.cookies = tuple(sorted(client.cookies.items()))
        caller.done.set()


def _joined(run: _Run, transport: Any) -> Callable[[], bool]:
    count = len(run.callers)
    # A lone caller has nobody to wait for (and a request passing through takes no seat).
    if count > 1 and isinstance(transport, CoalescingTransport):
        return lambda: transport.stats().waiters >= count
    return lambda: True


def _all_have_heads(run: _Run) -> Callable[[], bool]:
    return lambda: all(caller.head_seen.is_set() or caller.done.is_set() for caller in run.callers)


def _wait_sync(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


async def _wait_async(condition: Callable[[], bool], within: float) -> None:
    with anyio.move_on_after(within):
        while not condition():
            await anyio.sleep(0.001)


def _drive_sync(run: _Run, transport: Any) -> bool:
    """Run every caller in a thread of its own; True if one of them hung."""
    threads = [
        threading.Thread(target=_call_sync, args=(run, caller, transport), daemon=True)
        for caller in run.callers
    ]
    first, rest = threads[0], threads[1:]
    first.start()
    if rest:
        # The first caller leads: the others start once its request is on its way.
        if run.head_gate is not None:
            _wait_sync(run.head_gate.arrived.is_set, BOUND)
        elif run.body_gate is not None:
            _wait_sync(run.callers[0].head_seen.is_set, HEAD_WAIT)
        else:
            _wait_sync(lambda: bool(run.recorder.calls), BOUND)
        for thread in rest:
            thread.start()
    if run.head_gate is not None:
        _wait_sync(run.head_gate.arrived.is_set, BOUND)
        _wait_sync(_joined(run, transport), JOIN_WAIT)
        run.head_gate.open()
    if run.body_gate is not None:
        if not rest or run.callers[0].head_seen.is_set():
            # The followers' heads, unless the leader's never came (then theirs will not).
            _wait_sync(_all_have_heads(run), HEAD_WAIT)
        run.body_gate.open()
    deadline = time.monotonic() + BOUND
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return any(thread.is_alive() for thread in threads)


async def _drive_async(run: _Run, transport: Any) -> bool:
    with anyio.move_on_after(BOUND) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(_call_async, run, run.callers[0], transport)
            if len(run.callers) > 1:
                if run.head_gate is not None:
                    await _wait_async(run.head_gate.arrived.is_set, BOUND)
                elif run.body_gate is not None:
                    await _wait_async(run.callers[0].head_seen.is_set, HEAD_WAIT)
                else:
                    await _wait_async(lambda: bool(run.recorder.calls), BOUND)
                for caller in run.callers[1:]:
                    group.start_soon(_call_async, run, caller, transport)
            if run.head_gate is not None:
                await _wait_async(run.head_gate.arrived.is_set, BOUND)
                await _wait_async(_joined(run, transport), JOIN_WAIT)
                run.head_gate.open()
            if run.body_gate is not None:
                if len(run.callers) == 1 or run.callers[0].head_seen.is_set():
                    # The followers' heads, unless the leader's never came (then theirs
                    # will not either).
                    await _wait_async(_all_have_heads(run), HEAD_WAIT)
                run.body_gate.open()
    return scope.cancelled_caught


def _play(run: _Run, transport: Any) -> tuple[bool, list[str]]:
    """Play the run on its runtime: (hung, what escaped)."""
    escaped: list[str] = []
    if not run.scenario.is_async:
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            escaped.append(f"thread: {args.exc_type.__name__}")

        threading.excepthook = hook
        try:
            return _drive_sync(run, transport), escaped
        finally:
            threading.excepthook = previous
    hung = False

    async def main() -> None:
        nonlocal hung
        if run.scenario.runtime == "asyncio":

            def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                error = context.get("exception")
                escaped.append(f"loop: {type(error).__name__ if error else context.get('message')}")

            asyncio.get_running_loop().set_exception_handler(handler)
        hung = await _drive_async(run, transport)

    try:
        anyio.run(main, backend=run.scenario.runtime)
    except BaseException as error:
        escaped.append(f"run: {type(error).__name__}")
    return hung, escaped


def run(
    scenario: Scenario,
    server: DifferentialServer,
    upload: Path,
    *,
    coalesce: bool,
    callers: int = 1,
    options: Mapping[str, Any] | None = None,
) -> Outcome:
    """Play *scenario* with *callers* identical callers, alone or coalesced (with the
    transport's *options*)."""
    play = _Run(scenario, server, upload, callers)
    transport = CoalescingTransport(transport=play.inner, **(options or {})) if coalesce else play.inner
    try:
        hung, escaped = _play(play, transport)
    finally:
        server.open_all()
    stats = transport.stats() if isinstance(transport, CoalescingTransport) else None
    seen = RunSeen(
        callers=tuple(_caller_seen(play, caller) for caller in play.callers),
        inner=tuple(_inner_seen(play, call) for call in play.recorder.calls),
        lifecycle=tuple(_lifecycle_seen(play, event) for event in play.recorder.lifecycle),
        escaped=tuple(escaped),
        hung=hung,
    )
    return Outcome(seen, play.recorder, play.callers, transport, stats)


# -- turning what happened into plain values ------------------------------------------------


def _index(callers: list[Caller], value: object, attribute: str) -> int:
    """The index of the caller whose *attribute* is *value*."""
    for caller in callers:
        if value is not None and getattr(caller, attribute) is value:
            return caller.index
    return -1


def _summary(body: bytes | None) -> bytes | str | None:
    # Small bodies as they are; big ones by length and hash, so a diff stays readable.
    if body is None or len(body) <= 512:
        return body
    return f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}"


def _caller_seen(run: _Run, caller: Caller) -> CallerSeen:
    response = caller.response
    body = None
    if response is not None:
        try:
            body = response.content
        except (httpx.ResponseNotRead, httpx2.ResponseNotRead):
            body = None
    return CallerSeen(
        status=None if response is None else response.status_code,
        headers=None if response is None else tuple(response.headers.raw),
        body=_summary(body),
        extensions=None
        if response is None
        else tuple(
            sorted(
                (name, type(value).__name__ if name == "network_stream" else value)
                for name, value in response.extensions.items()
                if name != "coalesce"
            )
        ),
        cookies=caller.cookies,
        error=None if caller.error is None else error_seen(run, caller),
        headers_before_body=caller.headers_before_body,
        coalesce=None if response is None else response.extensions.get("coalesce"),
    )


def error_seen(run: _Run, caller: Caller) -> ErrorSeen:
    error = caller.error
    assert error is not None
    raised = run.recorder.raised
    request = "none"
    if isinstance(error, run.lib.RequestError):
        try:
            request = "own" if error.request is caller.request else "other"
        except RuntimeError:
            request = "unset"
    frames = tracebacks.extract_tb(error.__traceback__)
    return ErrorSeen(
        type=type(error),
        message=str(error),
        where=caller.where,
        request=request,
        is_inner_original=any(error is original for original in raised),
        cause_is_inner_original=any(error.__cause__ is original for original in raised),
        traceback_through_inner=any(frame.filename == recording.__file__ for frame in frames),
    )


def _inner_seen(run: _Run, call: recording.Call) -> InnerSeen:
    return InnerSeen(
        request_of=_index(run.callers, call.request, "request"),
        stream_of=_index(run.callers, call.stream, "stream"),
        headers=tuple(call.headers),
        body_in_memory=call.body_in_memory,
        stream_consumed=call.stream_consumed,
        probe=call.probe,
        tenant=call.tenant,
        local=call.local if not run.scenario.is_async else None,
        thread_of=None if run.scenario.is_async else _index(run.callers, call.thread_object, "thread"),
    )


def _lifecycle_seen(run: _Run, event: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(event) == 1:
        return event
    name, exc_type, exc_value, traceback = event
    if exc_value is None:
        value: object = None
    else:
        value = next(
            (f"caller {c.index}'s error" for c in run.callers if c.error is exc_value), repr(exc_value)
        )
    return (name, exc_type, value, traceback is not None)


def alone_and_coalesced(
    scenario: Scenario, server: DifferentialServer, upload: Path, options: Mapping[str, Any] | None = None
) -> tuple[Outcome, Outcome]:
    return (
        run(scenario, server, upload, coalesce=False),
        run(scenario, server, upload, coalesce=True, options=options),
    )


def without_cookies(seen: CallerSeen) -> CallerSeen:
    """What a follower must see: the leader's response less its ``Set-Cookie``."""
    headers = None
    if seen.headers is not None:
        headers = tuple((name, value) for name, value in seen.headers if name.lower() != b"set-cookie")
    return replace(seen, headers=headers, cookies=())


def assert_invisible(
    scenario: Scenario, server: DifferentialServer, upload: Path, options: Mapping[str, Any] | None = None
) -> tuple[Outcome, Outcome]:
    """Run *scenario* alone and coalesced; a lone caller must not tell them apart."""
    alone, together = alone_and_coalesced(scenario, server, upload, options)
    # The harness itself: alone, nothing hangs and nothing escapes.
    assert not alone.seen.hung, "the bare inner transport hung: the scenario is wrong"
    assert alone.seen.escaped == (), "something escaped the bare run: the scenario is wrong"
    assert together.seen == alone.seen
    # Everything that reached the inner transport is an upstream call, pass-through included.
    assert together.stats is not None
    assert together.stats.upstream_calls == len(together.recorder.calls), together.stats
    if scenario.body in STREAMED_BODIES:
        assert together.stats.bypassed.get("streamed_body", 0) == len(together.recorder.calls), together.stats
    return alone, together


def alone_and_overlapping(
    scenario: Scenario,
    server: DifferentialServer,
    upload: Path,
    callers: int = 3,
    options: Mapping[str, Any] | None = None,
) -> tuple[CallerSeen, Outcome]:
    """Play *scenario* alone, then with overlapping identical callers: one call, made
    with the first caller's request in its context; nothing hangs, nothing escapes."""
    alone = run(scenario, server, upload, coalesce=False)
    assert not alone.seen.hung
    assert alone.seen.escaped == ()
    together = run(scenario, server, upload, coalesce=True, callers=callers, options=options)
    assert not together.seen.hung, together.seen
    assert together.seen.escaped == ()
    # One call, with the first caller's request, in the first caller's context.
    assert together.seen.inner == alone.seen.inner
    assert together.stats is not None
    assert together.stats.upstream_calls == 1, together.stats
    return alone.seen.callers[0], together


def without_network_stream(seen: CallerSeen) -> CallerSeen:
    """*seen* less the ``network_stream`` extension: the leader's connection is not
    handed on to a follower."""
    if seen.extensions is None:
        return seen
    extensions = tuple((name, value) for name, value in seen.extensions if name != "network_stream")
    return replace(seen, extensions=extensions)


def as_follower(seen: CallerSeen, error_type: type[BaseException] | None = None) -> CallerSeen:
    """What a follower must see, given what the caller saw alone."""
    seen = without_network_stream(without_cookies(seen))
    if seen.error is None:
        return seen
    error = replace(
        seen.error,
        type=error_type or seen.error.type,
        # A fresh exception: the follower's own request, caused by the original.
        request="own",
        is_inner_original=False,
        cause_is_inner_original=True,
        # Where a follower's traceback runs is not specified; its message only for a
        # BaseException turned into a transport error.
        traceback_through_inner=False,
        message="" if error_type is not None else seen.error.message,
    )
    return replace(seen, error=error)


def comparable(seen: CallerSeen, keep_message: bool = True) -> CallerSeen:
    """*seen* less what is not specified for a follower (see ``as_follower``)."""
    seen = without_network_stream(seen)
    if seen.error is None:
        return seen
    error = replace(
        seen.error, traceback_through_inner=False, message=seen.error.message if keep_message else ""
    )
    return replace(seen, error=error)


def follower_error(scenario: Scenario) -> type[BaseException] | None:
    """What a follower gets for a BaseException of the leader's (None: the same type as
    the leader's error): a TransportError before the head, a ReadError mid-body."""
    if scenario.fault not in BASE_EXCEPTIONS:
        return None
    if isinstance(scenario.fault_at, int):
        return scenario.module.ReadError  # type: ignore[no-any-return]
    return scenario.module.TransportError  # type: ignore[no-any-return]


def assert_shared(
    scenario: Scenario,
    server: DifferentialServer,
    upload: Path,
    callers: int = 3,
    options: Mapping[str, Any] | None = None,
) -> tuple[CallerSeen, Outcome]:
    """Overlapping identical callers: the first sees what it saw alone, the others the
    same less its Set-Cookie, and, for an error, a fresh one caused by the original."""
    alone, together = alone_and_overlapping(scenario, server, upload, callers, options)
    leader, *followers = together.seen.callers
    assert leader == alone
    error_type = follower_error(scenario)
    expected = as_follower(alone, error_type)
    assert [comparable(seen, keep_message=error_type is None) for seen in followers] == [expected] * (
        callers - 1
    )
    # Only the first caller's response says it led (a caller with an error has none).
    infos = [seen.coalesce for seen in together.seen.callers]
    assert infos[0] is None or infos[0].leader is True
    assert all(info is None or info.leader is False for info in infos[1:])
    return alone, together
