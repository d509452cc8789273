"""The contenders: ways a user could make identical concurrent calls cost one upstream call.

Each contender answers the same two questions for a workload, ``post`` (a JSON call,
whole answer) and ``stream`` (a JSON call whose answer is read as it arrives), through
an httpx or httpx2 ``AsyncClient`` built with the same settings as every other.

The function-level contenders (the seed articles' dict of futures, ``coalescer``,
``aiocoalesce``) wrap ``client.post`` and key on the canonical JSON of the call, as
their documentation shows; every caller then gets the *same* Response object. They
cannot fan a stream out live: their ``stream`` shares the whole, buffered answer.

Adding a contender from elsewhere (the Redis backend in ``benchmarks/bench_redis.py``):
that module may define ``contenders() -> list[ContenderSpec]``; :func:`registry` picks
it up when it imports, and records why when it does not.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import importlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httpx

from httpx_coalesce import CoalescingTransport

__all__ = [
    "REFERENCE",
    "Contender",
    "ContenderSpec",
    "Received",
    "call_key",
    "registry",
]

JSON = dict[str, Any]

#: Generous, and the same for every client: the plain client queues thousands of
#: requests behind its 100 connections, and httpx's default 5 s pool timeout would turn
#: that wait into errors instead of a measurement.
TIMEOUT = 120.0

#: The contender every ratio is taken against.
REFERENCE = "ours-httpx"


def call_key(url: str, payload: JSON) -> str:
    """The function-level key: a hash of the canonical JSON of the call (sorted keys),
    as the seed articles build it."""
    canonical = json.dumps({"method": "POST", "url": url, "json": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _body(response: Any) -> bytes:
    # A wrong answer must count as an error, not as a fast call.
    response.raise_for_status()
    content: bytes = response.content
    return content


@dataclass(frozen=True)
class Received:
    """A streamed answer as one caller sees it."""

    chunks: AsyncIterator[bytes]
    #: Whether this caller's request was the one sent upstream (None: not told).
    leader: bool | None


class Contender(abc.ABC):
    """One way of making calls, bound to one client for the length of a workload."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @abc.abstractmethod
    async def post(self, url: str, payload: JSON) -> bytes:
        """Make the call; the caller's answer body."""

    @abc.abstractmethod
    def stream(self, url: str, payload: JSON) -> AbstractAsyncContextManager[Received]:
        """Make the call; the caller's answer body as it arrives."""

    def upstream_calls(self) -> int | None:
        """What the contender itself counted as sent upstream, if it counts (cross-check)."""
        return None

    async def aclose(self) -> None:
        await self.client.aclose()


class Plain(Contender):
    """Every call goes upstream."""

    async def post(self, url: str, payload: JSON) -> bytes:
        return _body(await self.client.post(url, json=payload))

    @asynccontextmanager
    async def stream(self, url: str, payload: JSON) -> AsyncIterator[Received]:
        async with self.client.stream("POST", url, json=payload) as response:
            info = response.extensions.get("coalesce")
            # A plain client's every caller sent its own request: each one leads.
            yield Received(response.aiter_bytes(), leader=True if info is None else bool(info.leader))


class Ours(Plain):
    """``CoalescingTransport``: the client code is the plain one, the transport coalesces."""

    def __init__(self, client: Any, transport: CoalescingTransport) -> None:
        super().__init__(client)
        self.transport = transport

    def upstream_calls(self) -> int | None:
        return self.transport.stats().upstream_calls


class _FunctionLevel(Contender):
    """A single-flight helper around ``client.post``: callers of one key share one Response."""

    @abc.abstractmethod
    async def _shared(self, key: str, url: str, payload: JSON) -> Any:
        """The Response of the flight of *key*, starting it if there is none."""

    async def post(self, url: str, payload: JSON) -> bytes:
        return _body(await self._shared(call_key(url, payload), url, payload))

    @asynccontextmanager
    async def stream(self, url: str, payload: JSON) -> AsyncIterator[Received]:
        # client.post reads the whole answer before anyone sees a byte: this is what
        # wrapping a function gives a stream. Who led is not told to the callers.
        response = await self._shared(call_key(url, payload), url, payload)
        yield Received(response.aiter_bytes(), leader=None)


class SeedArticles(_FunctionLevel):
    """The seed articles' approach, written from their description: a dict of in-flight
    asyncio futures keyed on the canonical JSON of the call, guarded by an asyncio.Lock
    held only around the dict.

    Unlike the article's listing, a follower does not await while holding the lock
    (that listing serialises every follower behind the lock).
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self._in_flight: dict[str, asyncio.Future[Any]] = {}
        self._lock = asyncio.Lock()

    async def _shared(self, key: str, url: str, payload: JSON) -> Any:
        async with self._lock:
            future = self._in_flight.get(key)
            leader = future is None
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._in_flight[key] = future
        if not leader:
            return await asyncio.shield(future)
        try:
            response = await self.client.post(url, json=payload)
        except BaseException as error:
            future.set_exception(error)
            # Retrieved here, so a flight nobody followed logs no "never retrieved".
            future.exception()
            raise
        else:
            future.set_result(response)
            return response
        finally:
            async with self._lock:
                self._in_flight.pop(key, None)


class CoalescerPackage(_FunctionLevel):
    """PyPI ``coalescer``: ``await group.do(key, client.post, url, json=payload)``."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        import coalescer

        self._group = coalescer.Coalescer()

    async def _shared(self, key: str, url: str, payload: JSON) -> Any:
        return await self._group.do(key, self.client.post, url, json=payload)


class AioCoalescePackage(_FunctionLevel):
    """PyPI ``aiocoalesce``: ``await coalescer.run(key, client.post(url, json=payload))``.

    A follower's coroutine is created and closed unrun, as the package documents.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        import aiocoalesce

        self._coalescer = aiocoalesce.Coalescer()

    async def _shared(self, key: str, url: str, payload: JSON) -> Any:
        return await self._coalescer.run(key, self.client.post(url, json=payload))


@dataclass(frozen=True)
class ContenderSpec:
    """How to build a contender, and what to say about it."""

    name: str
    label: str
    make: Callable[[], Contender]
    #: Followers see the stream as it arrives (False: only once the leader has it all).
    streams_live: bool
    note: str = ""
    #: Workloads (by name) this contender sits out, with the reason printed in the results.
    skips: dict[str, str] = field(default_factory=dict)


def _httpx_client(transport: Any = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=TIMEOUT)


def _ours(library: ModuleType) -> Ours:
    transport = CoalescingTransport()
    return Ours(library.AsyncClient(transport=transport, timeout=TIMEOUT), transport)


def builtin() -> list[ContenderSpec]:
    specs = [
        ContenderSpec("plain", "plain httpx", lambda: Plain(_httpx_client()), streams_live=True),
        ContenderSpec(
            "seed",
            "function-level (seed articles)",
            lambda: SeedArticles(_httpx_client()),
            streams_live=False,
            note="dict of in-flight asyncio futures keyed on sha256(json.dumps(call, sort_keys=True))",
        ),
    ]
    for name, label, cls in (
        ("coalescer", "coalescer (PyPI)", CoalescerPackage),
        ("aiocoalesce", "aiocoalesce (PyPI)", AioCoalescePackage),
    ):
        if _importable(name):
            specs.append(
                ContenderSpec(name, label, _maker(cls), streams_live=False, note="wraps client.post")
            )
    specs.append(
        ContenderSpec(REFERENCE, "CoalescingTransport + httpx", lambda: _ours(httpx), streams_live=True)
    )
    if _importable("httpx2"):
        httpx2 = importlib.import_module("httpx2")
        specs.append(
            ContenderSpec(
                "ours-httpx2", "CoalescingTransport + httpx2", lambda: _ours(httpx2), streams_live=True
            )
        )
    return specs


def _maker(cls: type[_FunctionLevel]) -> Callable[[], Contender]:
    return lambda: cls(_httpx_client())


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def registry(notes: list[str]) -> list[ContenderSpec]:
    """Every contender that can run here; why the others cannot is appended to *notes*."""
    specs = builtin()
    names = {spec.name for spec in specs}
    for wanted in ("coalescer", "aiocoalesce", "ours-httpx2"):
        if wanted not in names:
            notes.append(f"{wanted}: not installed, not run (pip install -e '.[bench]').")
    try:
        plugin = importlib.import_module("benchmarks.bench_redis")
    except ModuleNotFoundError as error:
        if error.name != "benchmarks.bench_redis":
            notes.append(f"bench_redis: needs {error.name}, not run.")
        return specs
    except Exception as error:  # another engineer's module: report it, run the rest
        notes.append(f"bench_redis: failed to import ({type(error).__name__}: {error}), not run.")
        return specs
    provide = getattr(plugin, "contenders", None)
    if provide is None:
        notes.append("bench_redis: defines no contenders() yet, not run.")
        return specs
    try:
        specs.extend(provide())
    except Exception as error:
        notes.append(f"bench_redis: contenders() failed ({type(error).__name__}: {error}), not run.")
    return specs
