"""hishel's cache under the transport, keyed per credential.

hishel (2.0) keys its cache by method and URL only, so an answer cached for one API
key would be served to a request with another: the one thing this library promises
never happens. When the inner transport is one of hishel's cache transports, every
request that carries credentials (the headers ``_key`` never lets two tenants share)
gets a cache key of its own through hishel's per-request ``caching`` extension: the
URL and those headers, hashed. A request without credentials, or one whose caller set
its own ``caching`` key, is left to hishel.

The key leaves the method out, as hishel's own RFC 9111 key does (an unsafe request
must find the entries it invalidates); without RFC mode hishel still tells GET from
HEAD by the stored request's method.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._key import is_credential

__all__ = ["keyed_per_credential"]


def keyed_per_credential(transport: Any) -> Any:
    """*transport* itself, or wrapped so hishel keys its cache per credential."""
    if transport is None or not type(transport).__module__.startswith("hishel."):
        return transport
    return _PerCredentialCache(transport)


def _with_cache_key(request: Any) -> dict[str, Any] | None:
    """Give *request* a cache key of its credentials; its extensions as they were, to put
    back once hishel has read them (the caller's request must come back unchanged)."""
    extensions: dict[str, Any] = request.extensions
    caching = extensions.get("caching")
    if isinstance(caching, dict) and "key" in caching:
        return None
    digest = hashlib.sha256(b"httpx-coalesce per-credential " + str(request.url).encode())
    found = False
    for name, value in request.headers.raw:
        if is_credential(name.decode("latin-1").lower()):
            found = True
            digest.update(b"\n" + name.lower() + b": " + value)
    if not found:
        return None
    request.extensions = {**extensions, "caching": {**(caching or {}), "key": digest.hexdigest()}}
    return extensions


class _PerCredentialCache:
    """hishel's transport, seen by the transport as its inner one (duck-typed)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def handle_request(self, request: Any) -> Any:
        original = _with_cache_key(request)
        try:
            return self.cache.handle_request(request)
        finally:
            if original is not None:
                request.extensions = original

    async def handle_async_request(self, request: Any) -> Any:
        # hishel reads the key before its first await.
        original = _with_cache_key(request)
        try:
            return await self.cache.handle_async_request(request)
        finally:
            if original is not None:
                request.extensions = original

    def close(self) -> None:
        self.cache.close()

    async def aclose(self) -> None:
        await self.cache.aclose()

    def __getattr__(self, name: str) -> Any:
        # Anything else (a tool reading the inner transport's attributes) is hishel's.
        return getattr(self.cache, name)
