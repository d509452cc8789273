"""Fixtures of the reliability suite: the seed, the echo upstream, and the figures.

The seed comes from ``HTTPX_COALESCE_SEED`` when set (to replay a failing run), else
from the clock; it is printed in the header of the run and in every figure line.
Each storm, fault and leak test records its figures (callers, cancellations, faults
injected; hangs, wrong responses, leaked flights) and they are summed up at the end.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from .echo_server import EchoUpstream

_SEED = int(os.environ.get("HTTPX_COALESCE_SEED", "0")) or int(time.time()) % 1_000_000
_FIGURES: dict[str, Counter[str]] = {}


def pytest_report_header() -> str:
    return f"reliability seed: {_SEED} (replay with HTTPX_COALESCE_SEED={_SEED})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"reliability figures (seed {_SEED})")
    total: Counter[str] = Counter()
    for name, figures in _FIGURES.items():
        total.update(figures)
        write(f"{name}: " + ", ".join(f"{key}={value}" for key, value in sorted(figures.items())))
    write("TOTAL: " + ", ".join(f"{key}={value}" for key, value in sorted(total.items())))


@pytest.fixture
def seed() -> int:
    return _SEED


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Counts a test adds to; printed, recorded as properties, and summed at the end."""
    counts: Counter[str] = Counter()
    yield counts
    _FIGURES[request.node.nodeid] = counts
    for key, value in sorted(counts.items()):
        request.node.user_properties.append((key, value))
    print(f"\n[seed {_SEED}] {request.node.nodeid}: {dict(sorted(counts.items()))}")


@pytest.fixture(scope="session")
def _echo_server() -> Iterator[EchoUpstream]:
    with EchoUpstream(_SEED) as server:
        yield server


@pytest.fixture
def echo(_echo_server: EchoUpstream) -> Iterator[EchoUpstream]:
    _echo_server.reset()
    _echo_server.open_gate()
    yield _echo_server
    _echo_server.open_gate()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    import redis

    unique = f"httpx-coalesce-reliability:{uuid.uuid4().hex[:12]}:"
    yield unique
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{unique}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
