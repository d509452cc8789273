"""Fixtures for the Redis backend: private servers to kill, fleets of worker processes, and
a check that no test leaves keys behind (the real Redis, ``redis_url``, is
tests/conftest.py's: never skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis._settings import Settings

from ..conftest import until_sync
from ..support.ports import free_port as free_port  # re-exported: fleet fixture modules import it from here
from ..support.redis_server import RedisServer
from .members import Members
from .members import blocked_readers as blocked_readers  # re-exported: test modules import it from here

# The real topologies (Cluster, Sentinel, Valkey): session fixtures of servers.py.
from .servers import redis_cluster as redis_cluster
from .servers import redis_sentinel as redis_sentinel
from .servers import valkey_server as valkey_server

ROOT = Path(__file__).resolve().parents[2]


StartRedis = Callable[..., RedisServer]


@pytest.fixture
def redis_server() -> Iterator[StartRedis]:
    """Starts private redis-servers (to stop mid-test); all are killed afterwards."""
    servers: list[RedisServer] = []

    def start(port: int | None = None) -> RedisServer:
        server = RedisServer(port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at what the backend wrote."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def member(
    redis_url: str, prefix: str, redis_client: redis.Redis, make_transport: Callable[..., CoalescingTransport]
) -> Members:
    """Makes members of this test's fleet (transports with backends of their own)."""
    return Members(redis_url, prefix, redis_client, make_transport)


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own. Afterwards no lease may be left, and every
    stream must be on its way out (a TTL no longer than the stream expiry)."""
    unique = f"httpx-coalesce-test:{uuid.uuid4().hex[:12]}:"
    yield unique
    keys = list(redis_client.scan_iter(match=f"{unique}*", count=1000))
    try:
        leases = [key for key in keys if key.startswith(f"{unique}lease:".encode())]
        assert not leases, f"leases left behind: {leases}"
        for key in keys:
            ttl = redis_client.pttl(key)
            assert 0 < ttl <= Settings().stream_ttl_ms, f"{key!r} has TTL {ttl} ms"
    finally:
        if keys:
            redis_client.delete(*keys)


class Worker:
    """A worker process (tests/redis/worker.py) and what it printed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis.worker", json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.events: dict[str, dict[str, Any]] = {}
        self.stderr = ""
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events[event["event"]] = event

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def has(self, event: str) -> bool:
        if event not in self.events and self.process.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=5)
            if event not in self.events:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.stderr}")
        return event in self.events

    def done(self, timeout: float = 30.0) -> dict[str, Any]:
        until_sync(lambda: self.has("done"), timeout)
        self.process.wait(timeout=timeout)
        assert self.process.returncode == 0, self.stderr
        return self.events["done"]

    def stderr_now(self) -> str:
        """What it wrote to stderr, once it has exited (killed, say)."""
        if self.process.poll() is not None:
            self._readers[1].join(timeout=5)
        return self.stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def fleet() -> Iterator[Callable[[dict[str, Any]], Worker]]:
    """Starts worker processes; any still running afterwards is killed."""
    workers: list[Worker] = []

    def start(config: dict[str, Any]) -> Worker:
        worker = Worker(config)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
