"""A backend's own clients open a connection in as few round trips as they can: ``HELLO``
(and the client's name, if given), not redis-py's ``CLIENT SETINFO`` nor its maintenance
notifications (httpx_coalesce/redis/_clients.py, ``quiet_handshake``). A burst opens a
process's connections while its first flights wait on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from httpx_coalesce.redis import RedisBackend
from httpx_coalesce.redis._ops import AsyncioOps

from .conftest import StartRedis

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture
def observed(redis_server: StartRedis) -> Iterator[tuple[str, redis.Redis]]:
    """A private Redis, and a client that reads its statistics."""
    server = redis_server()
    observer = redis.Redis.from_url(server.url)
    yield server.url, observer
    observer.close()


def _seen(observer: redis.Redis) -> tuple[dict[str, int], dict[str, Any]]:
    """Commands Redis ran (not the observer's own) and the errors it answered, since
    the last reset."""
    commands = {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in observer.info("commandstats").items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }
    return commands, observer.info("errorstats")


async def test_a_connection_of_a_backends_own_clients_opens_with_hello_alone(
    observed: tuple[str, redis.Redis],
) -> None:
    url, observer = observed
    backend = RedisBackend.from_url(url)
    clients = backend._clients
    observer.config_resetstat()
    sync = clients.sync_ops()._commands
    sync.ping()
    assert _seen(observer) == ({"hello": 1, "ping": 1}, {})

    observer.config_resetstat()
    ops = clients.async_ops()
    assert isinstance(ops, AsyncioOps)
    await ops._commands.ping()
    assert _seen(observer) == ({"hello": 1, "ping": 1}, {})
    await clients.aclose()


# redis-py's own advice (driver_info) is not in every version the backend supports.
@pytest.mark.filterwarnings("ignore:Call to '__init__' function with deprecated usage:DeprecationWarning")
async def test_a_library_name_given_is_still_sent(observed: tuple[str, redis.Redis]) -> None:
    url, observer = observed
    backend = RedisBackend.from_url(url, lib_name="mine")
    observer.config_resetstat()
    backend._clients.sync_ops()._commands.ping()
    commands, errors = _seen(observer)
    # Redis 7.0 does not know CLIENT SETINFO (7.2 does): sent either way.
    assert commands.get("client|setinfo", 0) + errors.get("errorstat_ERR", {}).get("count", 0) == 2
    backend._clients.close()
