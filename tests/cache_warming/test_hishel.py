"""Cache warming: CoalescingTransport composed with hishel (2.0), the caching transport httpx users use.

Against the real loopback server of tests/upstream.py, on httpx and httpx2, sync and async: a burst of
identical GETs makes one upstream call and later ones come from hishel's cache, in either order; POSTs are
never served from hishel's cache (``window=`` is the way for them); and the cache is keyed per credential.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import hishel
import httpx
import pytest

from httpx_coalesce import CoalescingTransport

from ..conftest import until, until_sync
from ..upstream import Upstream

N = 50
ROOT = Path(__file__).resolve().parents[2]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cache_warming_example", ROOT / "docs/examples/cache_warming.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: docs/examples/cache_warming.py, the code of docs/cache-warming.md.
EXAMPLE = _example()
#: Where CoalescingTransport sits: above hishel (the order the docs recommend) or under it.
ORDERS = ["coalescing-over-hishel", "hishel-over-coalescing"]


@pytest.fixture
def anyio_backend() -> str:
    # hishel's async SQLite storage runs on anysqlite, an asyncio library.
    return "asyncio"


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class Composition:
    """A client's transport (``outer``), and the CoalescingTransport in it."""

    def __init__(
        self, lib: ModuleType, is_async: bool, order: str, database: Path, rfc: bool = False, **options: Any
    ) -> None:
        cache = importlib.import_module(f"hishel.{lib.__name__}")
        network = lib.AsyncHTTPTransport() if is_async else lib.HTTPTransport()
        cache_class = cache.AsyncCacheTransport if is_async else cache.CacheTransport
        storage = (
            hishel.AsyncSqliteStorage(database_path=database)
            if is_async
            else hishel.SqliteStorage(database_path=database)
        )
        self.lib, self.is_async = lib, is_async
        if order == "coalescing-over-hishel":
            self.coalescing = CoalescingTransport(
                transport=cache_class(network, storage=storage, rfc=rfc), **options
            )
            self.outer: Any = self.coalescing
        else:
            self.coalescing = CoalescingTransport(transport=network, **options)
            self.outer = cache_class(self.coalescing, storage=storage, rfc=rfc)

    def all_joined(self, callers: int) -> Callable[[], bool]:
        return lambda: self.coalescing.stats().waiters == callers


async def send_async(client: Any, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    response = await client.request(method, path, headers=headers, json={} if method == "POST" else None)
    assert response.status_code == 200
    return response.json()


def send_sync(client: Any, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
    assert response.status_code == 200
    return response.json()


async def burst_async(
    composition: Composition, upstream: Upstream, base_url: str, held: bool
) -> tuple[list[Any], list[Any]]:
    """N identical GETs at once (held at the server until all joined one flight), then N more."""
    firsts: list[Any] = []
    async with composition.lib.AsyncClient(transport=composition.outer, base_url=base_url) as client:

        async def get(into: list[Any]) -> None:
            into.append(await send_async(client, "GET", "/echo"))

        if held:
            upstream.hold()
        async with anyio.create_task_group() as group:
            for _ in range(N):
                group.start_soon(get, firsts)
            if held:
                await until(composition.all_joined(N))
                upstream.gate.set()
        seconds: list[Any] = []
        async with anyio.create_task_group() as group:
            for _ in range(N):
                group.start_soon(get, seconds)
    return firsts, seconds


def burst_sync(composition: Composition, upstream: Upstream, base_url: str) -> tuple[list[Any], list[Any]]:
    with (
        composition.lib.Client(transport=composition.outer, base_url=base_url) as client,
        concurrent.futures.ThreadPoolExecutor(N) as pool,
    ):
        upstream.hold()
        futures = [pool.submit(send_sync, client, "GET", "/echo") for _ in range(N)]
        until_sync(composition.all_joined(N))
        upstream.gate.set()
        firsts = [future.result() for future in futures]
        seconds = list(pool.map(lambda _: send_sync(client, "GET", "/echo"), range(N)))
    return firsts, seconds


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_burst_of_gets_makes_one_upstream_call_and_the_next_burst_comes_from_the_cache(
    lib: ModuleType, is_async: bool, order: str, upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    composition = Composition(lib, is_async, order, tmp_path / "cache.db")
    if is_async:
        firsts, seconds = await burst_async(composition, upstream, base_url, held=True)
    else:
        firsts, seconds = await anyio.to_thread.run_sync(burst_sync, composition, upstream, base_url)
    assert upstream.hits["/echo"] == 1
    # Every caller, in both bursts, got the one answer the server gave.
    assert {answer["hit"] for answer in firsts + seconds} == {1}
    # The first burst shared one flight; the second, from the cache, may share flights too.
    assert composition.coalescing.stats().coalesced >= N - 1


@pytest.mark.anyio
@pytest.mark.parametrize("rfc", [False, True], ids=["hishel-default", "hishel-rfc9111"])
async def test_hishel_never_serves_a_post_from_its_cache_and_the_window_does(
    lib: ModuleType, upstream: Upstream, base_url: str, tmp_path: Path, rfc: bool
) -> None:
    plain = Composition(lib, True, "coalescing-over-hishel", tmp_path / "plain.db", rfc=rfc)
    async with lib.AsyncClient(transport=plain.outer, base_url=base_url) as client:
        answers = [await send_async(client, "POST", "/echo") for _ in range(2)]
    assert [answer["hit"] for answer in answers] == [1, 2]

    upstream.reset_state()
    windowed = Composition(
        lib, True, "coalescing-over-hishel", tmp_path / "windowed.db", rfc=rfc, window=60.0
    )
    async with lib.AsyncClient(transport=windowed.outer, base_url=base_url) as client:
        answers = [await send_async(client, "POST", "/echo") for _ in range(2)]
    assert [answer["hit"] for answer in answers] == [1, 1]
    assert windowed.coalescing.stats().window_hits == 1


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.anyio
async def test_hishel_alone_serves_one_tenants_answer_to_another(
    lib: ModuleType, upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    """Why the keying below exists: hishel keys its cache by method and URL only."""
    cache = importlib.import_module(f"hishel.{lib.__name__}")
    storage = hishel.AsyncSqliteStorage(database_path=tmp_path / "alone.db")
    transport = cache.AsyncCacheTransport(lib.AsyncHTTPTransport(), storage=storage)
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        first = await send_async(client, "GET", "/echo", {"authorization": "Bearer tenant-a"})
        second = await send_async(client, "GET", "/echo", {"authorization": "Bearer tenant-b"})
    assert second["auth_sha"] == first["auth_sha"] == sha("Bearer tenant-a")


@pytest.mark.anyio
async def test_under_coalescing_hishel_keeps_each_tenants_answers_apart(
    lib: ModuleType, is_async: bool, upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    composition = Composition(lib, is_async, "coalescing-over-hishel", tmp_path / "tenants.db")
    tenants = ["Bearer tenant-a", "Bearer tenant-b", "Bearer tenant-a", "Bearer tenant-b"]
    if is_async:
        async with lib.AsyncClient(transport=composition.outer, base_url=base_url) as client:
            answers = [await send_async(client, "GET", "/echo", {"authorization": key}) for key in tenants]
    else:
        with lib.Client(transport=composition.outer, base_url=base_url) as client:
            answers = [send_sync(client, "GET", "/echo", {"authorization": key}) for key in tenants]
    assert [answer["auth_sha"] for answer in answers] == [sha(key) for key in tenants]
    # One call per tenant; each tenant's second request came from the cache.
    assert [answer["hit"] for answer in answers] == [1, 2, 1, 2]
    assert upstream.hits["/echo"] == 2


@pytest.mark.anyio
async def test_a_request_comes_back_with_the_extensions_its_caller_gave(
    lib: ModuleType, upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    composition = Composition(lib, True, "coalescing-over-hishel", tmp_path / "request.db")
    async with lib.AsyncClient(transport=composition.outer, base_url=base_url) as client:
        request = client.build_request("GET", "/echo", headers={"authorization": "Bearer tenant-a"})
        extensions = dict(request.extensions)
        response = await client.send(request)
    assert response.status_code == 200
    assert request.extensions == extensions
    assert "caching" not in request.extensions


@pytest.mark.anyio
async def test_with_hishel_outside_an_event_hook_keys_its_cache_per_credential(
    upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    lib = httpx
    composition = Composition(lib, True, "hishel-over-coalescing", tmp_path / "hook.db")
    tenants = ["Bearer tenant-a", "Bearer tenant-b", "Bearer tenant-a"]
    async with lib.AsyncClient(
        transport=composition.outer, base_url=base_url, event_hooks={"request": [EXAMPLE.per_credential_key]}
    ) as client:
        answers = [await send_async(client, "GET", "/echo", {"authorization": key}) for key in tenants]
    assert [answer["auth_sha"] for answer in answers] == [sha(key) for key in tenants]
    assert upstream.hits["/echo"] == 2


@pytest.mark.anyio
async def test_the_docs_warm_client_calls_once_for_a_burst_and_then_serves_from_its_cache(
    upstream: Upstream, base_url: str, tmp_path: Path
) -> None:
    async with EXAMPLE.warm_client(base_url, tmp_path / "docs.db") as client:
        coalescing = client._transport  # the CoalescingTransport the example built
        upstream.hold()
        answers: list[Any] = []

        async def get() -> None:
            answers.append(await send_async(client, "GET", "/echo"))

        async with anyio.create_task_group() as group:
            for _ in range(N):
                group.start_soon(get)
            await until(lambda: coalescing.stats().waiters == N)
            upstream.gate.set()
        for _ in range(N):
            await get()
    assert upstream.hits["/echo"] == 1
    assert {answer["hit"] for answer in answers} == {1}
