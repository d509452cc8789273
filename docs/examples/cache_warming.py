"""docs/cache-warming.md's examples: hishel's cache under CoalescingTransport, and the event hook
that keys hishel's cache per credential when hishel sits outside it instead.
tests/cache_warming/test_hishel.py runs both."""

from __future__ import annotations

import hashlib
from pathlib import Path

import hishel
import httpx
from hishel.httpx import AsyncCacheTransport

from httpx_coalesce import CoalescingTransport


def warm_client(base_url: str, database: Path) -> httpx.AsyncClient:
    """Identical requests at the same moment make one call; later ones come from the cache."""
    cache = AsyncCacheTransport(
        httpx.AsyncHTTPTransport(), storage=hishel.AsyncSqliteStorage(database_path=database)
    )
    return httpx.AsyncClient(base_url=base_url, transport=CoalescingTransport(transport=cache))


async def per_credential_key(request: httpx.Request) -> None:
    """An event hook for hishel *outside* CoalescingTransport, which sees the request first:
    hishel keys by method and URL only, so without this one API key's answers reach another."""
    credentials = "\n".join(
        f"{name}: {value}"
        for name, value in request.headers.items()
        if name in ("authorization", "x-api-key", "api-key", "cookie")
    )
    key = hashlib.sha256(f"{request.url}\n{credentials}".encode()).hexdigest()
    request.extensions["caching"] = {**request.extensions.get("caching", {}), "key": key}
