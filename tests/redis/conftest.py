"""Fixtures for the Redis backend: a real Redis (never skipped), private servers to
kill, fleets of worker processes, and a check that no test leaves keys behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from httpx_coalesce.redis._settings import Settings

from ..conftest import until_sync

# The real topologies (Cluster, Sentinel, Valkey): session fixtures of servers.py.
from .servers import redis_cluster as redis_cluster
from .servers import redis_sentinel as redis_sentinel
from .servers import valkey_server as valkey_server

ROOT = Path(__file__).resolve().parents[2]
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_port_url() -> str:
    """A Redis URL where nothing listens: connections are refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A redis-server of the test's own, on a free port, with nothing on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            pytest.fail(f"cannot start redis-server: {error}")
        deadline = time.monotonic() + 10
        while not ping(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis on 6379 if it answers, else one started here; never a skip."""
    if ping(SHARED_REDIS):
        yield SHARED_REDIS
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.kill()


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


def blocked_readers(client: redis.Redis, name: str) -> int:
    """Connections named *name* blocked in a read: followers waiting on a leader."""
    return sum(
        1 for entry in client.client_list() if entry.get("name") == name and "b" in entry.get("flags", "")
    )


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
