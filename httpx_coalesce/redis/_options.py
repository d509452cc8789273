"""What the backend's constructors accept, checked before any client exists.

An option redis-py's clients do not take would otherwise fail inside every client made
(so at every request, as a fall-back); here it is refused at construction, with its name.
The backend makes both a sync and an asyncio client, so an option must suit both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

__all__ = ["check_options", "sentinel_url"]

#: Options the backend sets itself, or that would break it.
_REFUSED = {
    "decode_responses": "responses are bytes",
    "read_from_replicas": "a replica may not have the lease a leader just took",
    "load_balancing_strategy": "reads must go to the masters",
    "host": "give it in the URL",
    "port": "give it in the URL",
    "url": "give it as the first argument",
    "path": "give it in the URL",
    "startup_nodes": "give one node in the URL; the others are discovered",
    "connection_pool": "the backend makes its own clients; pass yours to RedisBackend(...)",
    "single_connection_client": "followers and leaders run at once",
}


def _parameters(function: Callable[..., Any]) -> set[str]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {
        name for name, parameter in inspect.signature(function).parameters.items() if parameter.kind in kinds
    } - {"self"}


@cache
def _accepted(cluster: bool) -> frozenset[str]:
    names = _parameters(redis.Redis.__init__) & _parameters(redis.asyncio.Redis.__init__)
    if cluster:
        names |= _parameters(redis.cluster.RedisCluster.__init__) & _parameters(
            redis.asyncio.cluster.RedisCluster.__init__
        )
    return frozenset(names)


def check_options(options: Mapping[str, Any], *, cluster: bool) -> None:
    for name, value in options.items():
        if name in _REFUSED and (name not in ("decode_responses", "read_from_replicas") or value):
            raise ValueError(f"{name}= is not supported: {_REFUSED[name]}")
        if name not in _accepted(cluster):
            kind = "Redis Cluster clients" if cluster else "redis-py's Redis clients (sync and asyncio)"
            raise TypeError(f"unknown option {name}=: {kind} do not take it")


def sentinel_url(rest: str) -> tuple[list[tuple[str, int]], str, int | None]:
    """``[user:password@]host:port[,host:port...]/service[/db]`` (after the scheme)."""
    where, _, path = rest.partition("/")
    if "@" in where:
        raise ValueError("give the sentinels' and the master's passwords to from_sentinel(), not in the URL")
    sentinels: list[tuple[str, int]] = []
    for address in where.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a sentinel URL lists host:port pairs, not {address!r}")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("a sentinel URL ends with /service or /service/db")
    return sentinels, parts[0], int(parts[1]) if len(parts) == 2 else None
