"""Real Redis for the tests: the shared one on 6379, or a redis-server of the test's own."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from .ports import free_port

SHARED_REDIS = "redis://127.0.0.1:6379/0"


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


@contextmanager
def shared_or_own_redis() -> Iterator[str]:
    """The shared Redis on 6379 if it answers, else one started here; never a skip."""
    if ping(SHARED_REDIS):
        yield SHARED_REDIS
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.kill()
