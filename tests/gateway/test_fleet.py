"""Several gateway workers on one Redis send one upstream call between them."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from .conftest import GatewayProcess, wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fleet"}]}
WORKERS = 4
CALLERS = 40


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
    redis_url: str,
) -> None:
    prefix = f"httpx-coalesce-gateway-test:{uuid.uuid4().hex[:12]}:"
    gateway = start_gateway(
        "--route",
        f"/fake={fake_api_server[1].url}",
        "--workers",
        str(WORKERS),
        "--redis",
        redis_url,
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


def test_the_leading_gateway_keeps_its_call_while_a_client_of_another_still_waits(
    start_gateway: Callable[..., GatewayProcess],
    fake_api: FakeLLMAPI,
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
    redis_url: str,
) -> None:
    prefix = f"httpx-coalesce-gateway-test:{uuid.uuid4().hex[:12]}:"
    flags = ("--route", f"/fake={fake_api_server[1].url}", "--redis", redis_url, "--redis-prefix", prefix)
    leading, following = start_gateway(*flags), start_gateway(*flags)
    hold = threading.Event()
    fake_api.hold = hold
    path = "/fake/v1/chat/completions"
    headers = {"authorization": "Bearer sk-fleet"}
    # The leaver sends, on a socket it will close, the very request httpx sends below.
    with httpx.Client() as client:
        request = client.build_request("POST", leading.url + path, json=CHAT, headers=headers)
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    watching = redis.Redis.from_url(redis_url)
    leaver = socket.create_connection(("127.0.0.1", leading.port))
    try:
        leaver.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + request.content)
        wait_for(lambda: fake_api.held == 1)
        with ThreadPoolExecutor(1) as pool:
            staying = pool.submit(httpx.post, following.url + path, json=CHAT, headers=headers, timeout=30)
            # The other gateway's client waits (following the round in Redis)...
            wait_for(lambda: following.waiters() == 1)
            # ...when the only client of the leading one leaves: the leader asks its
            # followers to show themselves, and the other gateway does.
            leaver.close()
            wait_for(lambda: leading.waiters() == 0)
            wait_for(lambda: any(watching.scan_iter(match=f"{prefix}watch:*")))
            hold.set()
            response = staying.result()
    finally:
        leaver.close()
        watching.close()
    assert response.status_code == 200
    assert fake_api.hits == 1
