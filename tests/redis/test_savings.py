"""What a fleet follower saved is counted and priced as a local follower's is.

A process whose answer came from another process's leader (or from the fleet window)
made no upstream call for it: its flight's leader saved one call, and each of its local
followers one more. ``stats()`` (bytes, tokens, ``cost_saved``) and the OpenTelemetry
counters say so; the process that led counts only its own followers. The answers come
from the fake LLM API on loopback, the fleet goes through the real Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import genai_prices
import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._cost import wait_priced
from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce.redis import RedisBackend

from ..conftest import until
from ..telemetry.conftest import Readings
from .conftest import blocked_readers

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

MakeTransport = Callable[..., CoalescingTransport]

MODEL = "gpt-4o-mini"
HEADERS = {"authorization": "Bearer sk-test"}
#: Callers in the follower process: its leader and one local follower.
FOLLOWERS = 2


@pytest.fixture
def readers() -> Iterator[list[InMemoryMetricReader]]:
    made: list[InMemoryMetricReader] = []
    yield made
    for reader in made:
        reader.shutdown()


def chat(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "fleet savings"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def one_call_price(api: FakeLLMAPI) -> Decimal:
    bill = api.bill("sk-test")
    assert bill.answers == 1
    usage = genai_prices.Usage(input_tokens=bill.input_tokens, output_tokens=bill.output_tokens)
    return genai_prices.calc_price(usage, MODEL, provider_id="openai").total_price


def transport_of(
    make_transport: MakeTransport,
    redis_url: str,
    prefix: str,
    name: str,
    readers: list[InMemoryMetricReader],
    **options: Any,
) -> tuple[CoalescingTransport, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    readers.append(reader)
    backend = RedisBackend.from_url(redis_url, prefix=prefix, client_name=f"{prefix}{name}")
    provider = MeterProvider(metric_readers=[reader])
    return make_transport(backend=backend, meter_provider=provider, **options), reader


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_fleet_follower_saves_its_call_and_each_local_follower_one_more(
    stream: bool,
    api: FakeLLMAPI,
    url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
    readers: list[InMemoryMetricReader],
) -> None:
    leader, _ = transport_of(make_transport, redis_url, prefix, "leader", readers)
    follower, follower_metrics = transport_of(make_transport, redis_url, prefix, "follower", readers)
    api.hold = threading.Event()
    answers: list[bytes] = []
    async with (
        httpx.AsyncClient(transport=leader, base_url=url, headers=HEADERS) as first,
        httpx.AsyncClient(transport=follower, base_url=url, headers=HEADERS) as second,
    ):

        async def call(client: httpx.AsyncClient) -> None:
            response = await client.post("/v1/chat/completions", json=chat(stream))
            assert response.status_code == 200, response.text
            answers.append(response.content)

        async with anyio.create_task_group() as group:
            group.start_soon(call, first)
            await until(lambda: api.held == 1)
            for _ in range(FOLLOWERS):
                group.start_soon(call, second)
            # Both of the follower's callers share its flight, whose leader waits in Redis.
            await until(
                lambda: (
                    follower.stats().waiters == FOLLOWERS
                    and blocked_readers(redis_client, f"{prefix}follower") == 1
                )
            )
            api.hold.set()

    assert len(answers) == 1 + FOLLOWERS
    assert len(set(answers)) == 1
    assert api.hits == 1
    assert wait_priced(10.0)
    price = one_call_price(api)
    tokens = api.bill("sk-test").tokens
    saved = follower.stats()
    assert saved.redis_followed == 1
    assert saved.upstream_calls == 0
    assert saved.bytes_saved == FOLLOWERS * len(answers[0])
    assert saved.tokens_saved == FOLLOWERS * tokens
    assert saved.cost_saved == FOLLOWERS * price
    assert dict(saved.cost_saved_by_model) == {MODEL: FOLLOWERS * price}
    # The leading process had no follower of its own: it saved nothing.
    led = leader.stats()
    assert (led.bytes_saved, led.tokens_saved, led.cost_saved) == (0, 0, Decimal(0))
    readings = Readings(follower_metrics)
    assert readings.sum("httpx_coalesce.bytes_saved") == saved.bytes_saved
    assert readings.sum("httpx_coalesce.tokens_saved") == saved.tokens_saved
    assert Decimal(str(readings.sum("httpx_coalesce.cost_saved"))) == pytest.approx(saved.cost_saved)


async def test_an_answer_from_the_fleet_window_saves_one_call(
    api: FakeLLMAPI,
    url: str,
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    make_transport: MakeTransport,
    readers: list[InMemoryMetricReader],
) -> None:
    first, _ = transport_of(make_transport, redis_url, prefix, "first", readers, window=30.0)
    late, _ = transport_of(make_transport, redis_url, prefix, "late", readers, window=30.0)
    async with httpx.AsyncClient(transport=first, base_url=url, headers=HEADERS) as client:
        answer = (await client.post("/v1/chat/completions", json=chat(False))).content
    async with httpx.AsyncClient(transport=late, base_url=url, headers=HEADERS) as client:
        again = (await client.post("/v1/chat/completions", json=chat(False))).content
    assert again == answer
    assert api.hits == 1
    assert wait_priced(10.0)
    saved = late.stats()
    assert saved.redis_window_hits == 1
    assert (saved.bytes_saved, saved.tokens_saved) == (len(answer), api.bill("sk-test").tokens)
    assert saved.cost_saved == one_call_price(api)
    redis_client.delete(*redis_client.scan_iter(match=f"{prefix}window:*"))
