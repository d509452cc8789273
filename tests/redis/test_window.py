"""The fleet window: with ``window=`` and a Redis backend, a late caller in any process
gets a finished answer from Redis for ``window`` seconds after its flight ended, under
the local window's rules (no Set-Cookie, no ``no-store`` or ``private``, no errors,
bounded size), and the Redis entry expires with the window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis

from httpx_coalesce import CoalescingTransport, Limits
from httpx_coalesce.redis import RedisBackend

from ..upstream import Upstream
from .conftest import StartRedis, Worker
from .faults import FaultProxy
from .test_fleet import HEADERS

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

WINDOW = 30.0


def windowed(
    make_transport: MakeTransport, redis_url: str, prefix: str, name: str, **options: Any
) -> CoalescingTransport:
    backend = RedisBackend.from_url(redis_url, prefix=prefix, client_name=f"{prefix}{name}")
    return make_transport(backend=backend, window=WINDOW, **options)


def window_keys(redis_client: redis.Redis, prefix: str) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{prefix}window:*"))


def test_late_caller_in_another_process_gets_the_finished_answer_from_redis(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
    fleet: Callable[[dict[str, Any]], Worker],
) -> None:
    first = windowed(make_transport, redis_url, prefix, "first")
    with httpx.Client(transport=first, base_url=base_url) as client:
        answer = client.post("/echo", json={"q": "window"}, headers=HEADERS)
    assert answer.status_code == 200
    # The flight is over: only the window holds the answer now, and it expires with it.
    [key] = window_keys(redis_client, prefix)
    assert 0 < redis_client.pttl(key) <= WINDOW * 1000
    assert not list(redis_client.scan_iter(match=f"{prefix}lease:*"))

    late = fleet(
        {
            "redis": redis_url,
            "prefix": prefix,
            "client_name": f"{prefix}late",
            "url": base_url + "/echo",
            "method": "POST",
            "json": {"q": "window"},
            "headers": HEADERS,
            "callers": 3,
            "window": WINDOW,
        }
    ).done()
    assert [result["body"] for result in late["results"]] == [answer.text] * 3
    assert upstream.hits["/echo"] == 1
    assert late["stats"]["redis_window_hits"] == 1
    assert late["stats"]["upstream_calls"] == 0
    redis_client.delete(key)


@asyncio_only
@pytest.mark.parametrize(
    "path",
    [
        "/headers?set-cookie=session%3Done",
        "/headers?cache-control=no-store",
        "/headers?cache-control=private%2C%20max-age%3D60",
        "/status/503",
    ],
    ids=["set-cookie", "no-store", "private", "error"],
)
async def test_answers_the_local_window_would_not_keep_are_not_kept_for_the_fleet(
    path: str,
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
) -> None:
    first = windowed(make_transport, redis_url, prefix, "first")
    second = windowed(make_transport, redis_url, prefix, "second")
    async with httpx.AsyncClient(transport=first, base_url=base_url) as client:
        await client.get(path)
    async with httpx.AsyncClient(transport=second, base_url=base_url) as client:
        await client.get(path)
    assert window_keys(redis_client, prefix) == []
    assert upstream.total == 2


@asyncio_only
async def test_an_answer_larger_than_the_window_allows_is_not_kept_for_the_fleet(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
) -> None:
    small = Limits(window_bytes=64)
    first = windowed(make_transport, redis_url, prefix, "first", limits=small)
    async with httpx.AsyncClient(transport=first, base_url=base_url) as client:
        await client.get("/echo")
    assert window_keys(redis_client, prefix) == []


@asyncio_only
async def test_a_kept_answer_reaches_the_other_transport_without_credentials_of_its_own(
    upstream: Upstream,
    base_url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
) -> None:
    first = windowed(make_transport, redis_url, prefix, "first")
    second = windowed(make_transport, redis_url, prefix, "second")
    async with httpx.AsyncClient(transport=first, base_url=base_url) as client:
        kept = (await client.get("/echo")).content
    async with httpx.AsyncClient(transport=second, base_url=base_url) as client:
        late = await client.get("/echo")
        # Another tenant: its key differs, so the window has nothing for it.
        other = await client.get("/echo", headers={"authorization": "Bearer other"})
    assert late.content == kept
    assert orjson.loads(other.content)["hit"] == 2
    assert second.stats().redis_window_hits == 1
    redis_client.delete(*window_keys(redis_client, prefix))


@asyncio_only
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/echo"), ("GET", "/sse?events=3")], ids=["buffered", "sse"]
)
async def test_a_caller_elsewhere_right_behind_the_leaders_caller_is_a_window_hit(
    method: str,
    path: str,
    upstream: Upstream,
    base_url: str,
    redis_server: StartRedis,
    make_transport: MakeTransport,
) -> None:
    """Pass: B (another transport) starts the moment A's read of the whole body returns,
    and gets the answer from the fleet window, with one upstream call. A's Redis is
    behind a proxy that delays every byte: a window entry written after A's caller
    saw the end would reach Redis after B looked (and B would call upstream itself)."""
    server = redis_server()
    proxy = FaultProxy(server.port)
    try:
        proxy.delay = 0.2
        first = make_transport(backend=RedisBackend.from_url(proxy.url, socket_timeout=5.0), window=WINDOW)
        second = make_transport(backend=RedisBackend.from_url(server.url), window=WINDOW)
        async with (
            httpx.AsyncClient(transport=first, base_url=base_url, timeout=30.0) as a,
            httpx.AsyncClient(transport=second, base_url=base_url) as b,
        ):
            async with a.stream(method, path) as response:
                body = await response.aread()
            # Nothing in between: B starts as A's read returns.
            late = await b.request(method, path)
        assert late.content == body
        assert upstream.total == 1
        assert second.stats().redis_window_hits == 1
        assert second.stats().upstream_calls == 0
    finally:
        proxy.close()
