"""Members of a fleet within one test process: each transport has its own backend (its
own connections and client name), so two transports are two members, as two processes
would be.

Most tests here play one round between a leader and a follower: the leader's call
reaches the upstream, which holds its answer; the follower's call follows the round
through Redis; then the test does what it is about (a fault, a lease taken away), and
the upstream answers. ``lead_and_follow`` is that round, so each test shows only what
it does differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import redis

from httpx_coalesce import CoalescingTransport, Limits
from httpx_coalesce.redis import RedisBackend
from httpx_coalesce.redis._names import FlightKeys

from ..conftest import until

#: What each member's caller does: (its member's name, "leader" or "follower"; its client).
Call = Callable[[str, Any], Coroutine[Any, Any, None]]


def blocked_readers(client: redis.Redis, name: str) -> int:
    """Connections named *name* blocked in a read: followers waiting on a leader."""
    return sum(
        1 for entry in client.client_list() if entry.get("name") == name and "b" in entry.get("flags", "")
    )


def backend(redis_url: str, prefix: str, name: str, **options: Any) -> RedisBackend:
    return RedisBackend.from_url(redis_url, prefix=prefix, client_name=f"{prefix}{name}", **options)


def following(redis_client: redis.Redis, prefix: str, name: str) -> Callable[[], bool]:
    """Whether the transport whose backend is *name* is blocked reading a leader's stream."""
    return lambda: blocked_readers(redis_client, f"{prefix}{name}") == 1


class Members:
    """The ``member`` fixture: ``member(name)`` makes a member of the test's fleet (a
    transport, over *transport* and within *limits* if given, with a backend of its own
    named *name*, with *options*)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        redis_client: redis.Redis,
        make_transport: Callable[..., CoalescingTransport],
    ) -> None:
        self._redis_url = redis_url
        self._prefix = prefix
        self._redis_client = redis_client
        self._make_transport = make_transport

    def __call__(
        self, name: str, *, transport: Any = None, limits: Limits | None = None, **options: Any
    ) -> CoalescingTransport:
        extra: dict[str, Any] = {}
        if transport is not None:
            extra["transport"] = transport
        if limits is not None:
            extra["limits"] = limits
        return self._make_transport(backend=backend(self._redis_url, self._prefix, name, **options), **extra)

    def following(self, name: str) -> Callable[[], bool]:
        """Whether the member *name* is blocked reading a leader's stream."""
        return following(self._redis_client, self._prefix, name)


def records(redis_client: redis.Redis, prefix: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every stream under *prefix*: its records as (type, data)."""
    streams: dict[str, list[tuple[bytes, bytes]]] = {}
    for key in redis_client.scan_iter(match=f"{prefix}stream:*"):
        entries: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(key)  # type: ignore[assignment]
        streams[key.decode()] = [(fields[b"t"], fields[b"d"]) for _, fields in entries]
    return streams


def request_key(redis_client: redis.Redis, prefix: str) -> tuple[str, str]:
    """The request key and token of the one round recorded under *prefix*."""
    [name] = records(redis_client, prefix)
    # {prefix}stream:{bucket tag}:{key}:{token}
    _, key, token = name.rsplit(":", 2)
    return key, token


async def finished_round(
    transport: CoalescingTransport, url: str, redis_client: redis.Redis, prefix: str
) -> tuple[FlightKeys, str]:
    """A round run to its end (a GET of *url* through *transport*): its key's names in
    Redis, and its token."""
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(url)
    key, token = request_key(redis_client, prefix)
    return FlightKeys(prefix, key), token


def plant_round(redis_client: redis.Redis, keys: FlightKeys, token: str, kind: str, data: str) -> None:
    """A round no leader of ours started: the key's lease holds *token*, and the round's
    stream has one record (of type *kind*) and the usual expiry."""
    redis_client.set(keys.lease, token, px=60_000)
    redis_client.xadd(keys.stream(token), {"t": kind, "d": data})
    redis_client.pexpire(keys.stream(token), 30_000)


async def get_past_a_planted_lease(
    transport: CoalescingTransport, url: str, keys: FlightKeys, redis_client: redis.Redis
) -> httpx.Response:
    """A GET of *url* through *transport* while the lease the test wrote in *keys* stands;
    the lease is gone afterwards (no leader of ours would ever end it)."""
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(url)
    finally:
        redis_client.delete(keys.lease)


#: What each member's streaming caller got: the bytes handed out, and the error that ended
#: them as "class: message" (None when the body ended well).
Outcome = tuple[bytes, str | None]


@asynccontextmanager
async def clients(
    leader: CoalescingTransport, follower: CoalescingTransport, base_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A client of the leader's transport and one of the follower's."""
    async with (
        httpx.AsyncClient(transport=leader, base_url=base_url) as first,
        httpx.AsyncClient(transport=follower, base_url=base_url) as second,
    ):
        yield first, second


async def read_stream(
    client: httpx.AsyncClient,
    path: str,
    catch: type[httpx.HTTPError] = httpx.HTTPError,
    progress: Callable[[bytes], None] | None = None,
) -> Outcome:
    """Streams a GET of *path*: what the caller got. An error other than *catch* fails
    the test. *progress*, if given, is told what the caller has so far, at each chunk."""
    received = b""
    try:
        async with client.stream("GET", path) as response:
            async for chunk in response.aiter_raw():
                received += chunk
                if progress is not None:
                    progress(received)
    except catch as error:
        return received, f"{type(error).__name__}: {error}"
    return received, None


def streaming(
    path: str,
    outcomes: dict[str, Outcome],
    catch: type[httpx.HTTPError] = httpx.HTTPError,
    received: dict[str, bytes] | None = None,
) -> Call:
    """A call that streams a GET of *path* and keeps what it got in *outcomes*, under its
    member's name (as soon as it has it: a test may wait for one caller's end); and, if
    *received* is given, what it has so far there, as it reads (a test may wait for a
    caller to have the first bytes)."""

    async def call(name: str, client: httpx.AsyncClient) -> None:
        progress = None if received is None else partial(received.__setitem__, name)
        outcomes[name] = await read_stream(client, path, catch, progress)

    return call


async def play_round(
    first: Any,
    second: Any,
    call: Call,
    *,
    arrived: Callable[[], bool],
    following: Callable[[], bool],
    release: Callable[[], None],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One round: *call* ("leader") in *first* until the upstream has it (*arrived*), then
    *call* ("follower") in *second* until it follows the round (*following*); then
    *meanwhile*, then the upstream answers (*release*). Returns once both calls have."""
    async with anyio.create_task_group() as group:
        group.start_soon(call, "leader", first)
        await until(arrived)
        group.start_soon(call, "follower", second)
        await until(following)
        if meanwhile is not None:
            await meanwhile()
        release()


async def lead_and_follow(
    leader: CoalescingTransport,
    follower: CoalescingTransport,
    base_url: str,
    call: Call,
    *,
    arrived: Callable[[], bool],
    following: Callable[[], bool],
    release: Callable[[], None],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """``play_round`` in an httpx client of each transport."""
    async with clients(leader, follower, base_url) as (first, second):
        await play_round(
            first, second, call, arrived=arrived, following=following, release=release, meanwhile=meanwhile
        )
