"""The inner transport of every differential scenario: a real transport to the loopback
server, wrapped so that it records what it was given and can fail on demand.

It records each ``handle_request``/``handle_async_request`` call as it starts (the
request object, its stream object and how much of the body had been read, the context
it ran in), every exception that left it (from the call or from reading the body), and
the enter/exit/close calls it got. A fault is raised before sending, after the head
came back, or after a number of body bytes.

The wrapper is made a subclass of the library's own transport base classes, as any
transport a user would write is, so a check of "which library is this transport of"
sees the truth.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any

import anyio

__all__ = ["LOCAL", "TENANT", "Call", "Fault", "Recorder", "forwarding_transport", "recording_transport"]

#: What a caller sets before it sends; the inner transport reads it where it runs.
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="<unset>")
#: A thread-local the caller's thread sets; visible to the inner transport only in it.
LOCAL = threading.local()


@dataclass(frozen=True)
class Fault:
    """Raise *error* before sending (``"send"``), once the head came back (``"head"``),
    or after this many body bytes were handed on (an int)."""

    error: BaseException
    at: str | int


@dataclass
class Call:
    """What one call to the inner transport was given, taken as it started."""

    request: Any
    stream: Any
    headers: list[tuple[bytes, bytes]]
    #: The request's body was in memory (``Request.read()`` had been done).
    body_in_memory: bool
    #: httpx's own flag on an iterator stream: it has been iterated.
    stream_consumed: bool | None
    #: What the scenario's probe said (generator chunks pulled, file position).
    probe: object
    tenant: str
    local: str | None
    thread: int
    #: The thread object itself: an ident can be reused once a thread has ended.
    thread_object: threading.Thread
    #: asyncio or trio task (None for sync calls).
    task: object


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    #: Every exception that left the inner transport (call or body), in order.
    raised: list[BaseException] = field(default_factory=list)
    #: ("enter",), ("exit", type, value, traceback), ("close",), and the async twins.
    lifecycle: list[tuple[Any, ...]] = field(default_factory=list)
    #: Body bytes handed on to whoever reads the inner response.
    body_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_call(self, request: Any, probe: Callable[[Any], object]) -> None:
        stream = request.stream
        call = Call(
            request=request,
            stream=stream,
            headers=list(request.headers.raw),
            body_in_memory=hasattr(request, "_content"),
            stream_consumed=getattr(stream, "_is_stream_consumed", None),
            probe=probe(request),
            tenant=TENANT.get(),
            local=getattr(LOCAL, "value", None),
            thread=threading.get_ident(),
            thread_object=threading.current_thread(),
            task=_current_task(),
        )
        with self.lock:
            self.calls.append(call)

    def record_raised(self, error: BaseException) -> None:
        with self.lock:
            if not any(error is seen for seen in self.raised):
                self.raised.append(error)


def _current_task() -> object:
    try:
        return anyio.get_current_task().id
    except RuntimeError:  # no event loop: a sync call
        return None


def _no_probe(request: Any) -> object:
    return None


class _Recording:
    """What the sync and async wrappers share: the real transport, what to record into,
    the fault, and how the real response's body is passed on."""

    def __init__(
        self,
        real: Any,
        recorder: Recorder,
        fault: Fault | None,
        probe: Callable[[Any], object],
        stream_class: type[Any],
    ) -> None:
        self._real = real
        self._recorder = recorder
        self._fault = fault
        self._probe = probe
        self._stream_class = stream_class

    def _pass_body_on(self, response: Any) -> Any:
        fault = self._fault
        limit = fault.at if fault is not None and isinstance(fault.at, int) else None
        response.stream = self._stream_class(response.stream, self._recorder, fault, limit)
        return response


class _SyncRecording(_Recording):
    def handle_request(self, request: Any) -> Any:
        self._recorder.record_call(request, self._probe)
        fault = self._fault
        try:
            if fault is not None and fault.at == "send":
                raise fault.error
            response = self._real.handle_request(request)
            if fault is not None and fault.at == "head":
                response.close()
                raise fault.error
            return self._pass_body_on(response)
        except BaseException as error:
            self._recorder.record_raised(error)
            raise

    def __enter__(self) -> Any:
        self._recorder.lifecycle.append(("enter",))
        self._real.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._recorder.lifecycle.append(("exit", exc_type, exc_value, traceback))
        self._real.__exit__(exc_type, exc_value, traceback)

    def close(self) -> None:
        self._recorder.lifecycle.append(("close",))
        self._real.close()


class _AsyncRecording(_Recording):
    async def handle_async_request(self, request: Any) -> Any:
        self._recorder.record_call(request, self._probe)
        fault = self._fault
        try:
            if fault is not None and fault.at == "send":
                raise fault.error
            response = await self._real.handle_async_request(request)
            if fault is not None and fault.at == "head":
                await response.aclose()
                raise fault.error
            return self._pass_body_on(response)
        except BaseException as error:
            self._recorder.record_raised(error)
            raise

    async def __aenter__(self) -> Any:
        self._recorder.lifecycle.append(("aenter",))
        await self._real.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._recorder.lifecycle.append(("aexit", exc_type, exc_value, traceback))
        await self._real.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        self._recorder.lifecycle.append(("aclose",))
        await self._real.aclose()


class _Body:
    """The real response's body, passed on; records what leaves it, fails on demand."""

    def __init__(self, real: Any, recorder: Recorder, fault: Fault | None, limit: int | None) -> None:
        self._real = real
        self._recorder = recorder
        self._fault = fault
        self._limit = limit


class _SyncBody(_Body):
    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._real:
                if self._limit is not None and self._recorder.body_bytes + len(chunk) >= self._limit:
                    yield chunk[: self._limit - self._recorder.body_bytes]
                    assert self._fault is not None
                    raise self._fault.error
                self._recorder.body_bytes += len(chunk)
                yield chunk
        except BaseException as error:
            if not isinstance(error, GeneratorExit):
                self._recorder.record_raised(error)
            raise

    def close(self) -> None:
        self._real.close()


class _AsyncBody(_Body):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._real:
                if self._limit is not None and self._recorder.body_bytes + len(chunk) >= self._limit:
                    yield chunk[: self._limit - self._recorder.body_bytes]
                    assert self._fault is not None
                    raise self._fault.error
                self._recorder.body_bytes += len(chunk)
                yield chunk
        except BaseException as error:
            if not isinstance(error, GeneratorExit):
                self._recorder.record_raised(error)
            raise

    async def aclose(self) -> None:
        await self._real.aclose()


_classes: dict[tuple[type[Any], ...], type[Any]] = {}


def _library_class(ours: type[Any], base: type[Any]) -> type[Any]:
    key = (ours, base)
    cls = _classes.get(key)
    if cls is None:
        cls = _classes[key] = type(ours.__name__.lstrip("_"), (ours, base), {})
    return cls


def recording_transport(
    lib: ModuleType,
    is_async: bool,
    *,
    fault: Fault | None = None,
    probe: Callable[[Any], object] = _no_probe,
) -> tuple[Any, Recorder]:
    """A recording wrapper around a new real transport of *lib*, and its recorder."""
    recorder = Recorder()
    if is_async:
        cls = _library_class(_AsyncRecording, lib.AsyncBaseTransport)
        body = _library_class(_AsyncBody, lib.AsyncByteStream)
        real: Any = lib.AsyncHTTPTransport(verify=False)
    else:
        cls = _library_class(_SyncRecording, lib.BaseTransport)
        body = _library_class(_SyncBody, lib.SyncByteStream)
        real = lib.HTTPTransport(verify=False)
    return cls(real, recorder, fault, probe, body), recorder


class _SyncForwarding:
    """A transport that forwards every call to another, whatever its library."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def handle_request(self, request: Any) -> Any:
        return self._inner.handle_request(request)

    def __enter__(self) -> Any:
        self._inner.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self._inner.__exit__(*args)

    def close(self) -> None:
        self._inner.close()


class _AsyncForwarding:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        return await self._inner.handle_async_request(request)

    async def __aenter__(self) -> Any:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self._inner.__aexit__(*args)

    async def aclose(self) -> None:
        await self._inner.aclose()


def forwarding_transport(inner: Any, lib: ModuleType, is_async: bool) -> Any:
    """*inner* behind a transport of *lib*'s classes that forwards every call to it.

    Made with the other library than *inner*'s, it is the OpenAI SDK's workload-identity
    transport: an ``httpx2.BaseTransport`` under an httpx client, forwarding to the
    caller's own httpx transport. Clients accept it, as they duck-type their transport.
    """
    if is_async:
        return _library_class(_AsyncForwarding, lib.AsyncBaseTransport)(inner)
    return _library_class(_SyncForwarding, lib.BaseTransport)(inner)
