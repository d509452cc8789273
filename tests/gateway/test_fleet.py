"""Several gateway workers on one Redis send one upstream call between them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from ..redis.conftest import SHARED_REDIS, RedisServer, ping
from .conftest import GatewayProcess, wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fleet"}]}
WORKERS = 4
CALLERS = 40


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[str]:
    """The shared Redis on 6379 if it answers, else one started here."""
    if ping(SHARED_REDIS):
        yield SHARED_REDIS
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.kill()


class Workers:
    """What each worker of a gateway says about itself, one scrape at a time: a new
    connection reaches whichever worker accepts it."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self._gateway = gateway
        self.waiters: dict[str, float] = {}
        self.peak: dict[str, float] = {}

    def scrape(self) -> None:
        text = httpx.get(self._gateway.url + "/metrics", headers={"connection": "close"}).text
        pid, waiters = "", 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "httpx_coalesce_gateway_worker":
                    pid = sample.labels["pid"]
                elif sample.name == "httpx_coalesce_waiters_active":
                    waiters = sample.value
        self.waiters[pid] = waiters
        self.peak[pid] = max(waiters, self.peak.get(pid, 0.0))

    def all_waiting(self, count: int) -> bool:
        self.scrape()
        return len(self.waiters) == WORKERS and sum(self.waiters.values()) == count


def test_four_workers_on_redis_send_one_upstream_call(
    start_gateway: Callable[..., GatewayProcess],
    fake_api: FakeLLMAPI,
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
    fleet_redis: str,
) -> None:
    prefix = f"httpx-coalesce-gateway-test:{uuid.uuid4().hex[:12]}:"
    gateway = start_gateway(
        "--route",
        f"/fake={fake_api_server[1].url}",
        "--workers",
        str(WORKERS),
        "--redis",
        fleet_redis,
        "--redis-prefix",
        prefix,
    )
    hold = threading.Event()
    fake_api.hold = hold
    workers = Workers(gateway)

    def call() -> str:
        # A connection each, so the kernel spreads them over the workers.
        response = httpx.post(
            gateway.url + "/fake/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer sk-fleet", "connection": "close"},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["id"])

    with ThreadPoolExecutor(CALLERS) as pool:
        futures = [pool.submit(call) for _ in range(CALLERS)]
        try:
            wait_for(lambda: fake_api.held == 1 and workers.all_waiting(CALLERS), timeout=30)
        finally:
            hold.set()
        ids = [future.result() for future in futures]
    assert fake_api.hits == 1
    assert len(set(ids)) == 1
    # Callers waited in more than one worker, or the test proved nothing about the fleet.
    assert sum(1 for peak in workers.peak.values() if peak) >= 2
