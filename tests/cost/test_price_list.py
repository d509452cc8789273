"""How an answer is priced: genai-prices' own reading where it knows the API, ours where it does not, and
a metric whose attributes come from the price list's finite ids. Also: the price list never goes online."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from types import ModuleType
from typing import Any

import anyio
import genai_prices
import httpx
import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._cost import price_of
from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._telemetry import INSTRUMENTS
from httpx_coalesce._usage import read_answer

from ..conftest import until
from .conftest import priced

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
OPENAI_CHAT = httpx.URL("https://api.openai.com/v1/chat/completions")
ANTHROPIC = httpx.URL("https://api.anthropic.com/v1/messages")
JSON = b"application/json"
INSTRUMENT = next(spec for spec in INSTRUMENTS if spec[0] == "httpx_coalesce.cost_saved")


def json_answer(document: dict[str, Any]) -> Any:
    return read_answer(orjson.dumps(document), JSON)


def test_an_openai_answer_at_its_own_address_is_read_by_genai_prices_with_its_cached_tokens() -> None:
    document = {
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "total_tokens": 2300,
            "prompt_tokens_details": {"cached_tokens": 1500},
        },
    }
    price = price_of(json_answer(document), OPENAI_CHAT, NOW)
    expected = genai_prices.extract_usage(document, provider_id="openai", api_flavor="chat")
    assert price is not None
    assert (price.provider, price.model) == ("openai", "gpt-4o")
    assert price.usd == expected.calc_price(genai_request_timestamp=NOW).total_price
    # Cached tokens are cheaper: the same tokens uncached cost more.
    uncached = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=2000, output_tokens=300), "gpt-4o", provider_id="openai"
    )
    assert price.usd < uncached.total_price


def test_an_anthropic_answer_prices_its_cache_reads_and_writes() -> None:
    document = {
        "type": "message",
        "model": "claude-sonnet-4-5-20250929",
        "usage": {
            "input_tokens": 100,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 4000,
            "output_tokens": 250,
        },
    }
    price = price_of(json_answer(document), ANTHROPIC, NOW)
    expected = genai_prices.extract_usage(document, provider_id="anthropic").calc_price(
        genai_request_timestamp=NOW
    )
    assert price is not None
    assert (price.provider, price.model) == ("anthropic", "claude-sonnet-4-5")
    assert price.usd == expected.total_price > 0


def test_a_stream_is_priced_from_its_final_usage_chunk() -> None:
    events = [
        {
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"delta": {"content": "hi"}}],
        },
        {
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        },
    ]
    body = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    price = price_of(read_answer(body, b"text/event-stream"), OPENAI_CHAT, NOW)
    usage = genai_prices.Usage(input_tokens=1000, output_tokens=200)
    assert price is not None
    assert price.usd == genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price


def test_a_model_the_price_list_does_not_know_has_no_price_and_raises_nothing() -> None:
    document = {"model": "house-model-7b", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    assert price_of(json_answer(document), OPENAI_CHAT, NOW) is None
    assert price_of(json_answer(document), httpx.URL("http://127.0.0.1:9/v1/chat/completions"), NOW) is None


@pytest.fixture
def meter_provider() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def cost_points(reader: InMemoryMetricReader) -> list[NumberDataPoint]:
    data = reader.get_metrics_data()
    assert data is not None
    points: list[NumberDataPoint] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "httpx_coalesce.cost_saved":
                    assert (metric.unit, metric.description) == ("USD", INSTRUMENT[3])
                    points += [p for p in metric.data.data_points if isinstance(p, NumberDataPoint)]
    return points


@pytest.mark.anyio
async def test_the_metric_names_the_price_lists_provider_and_model_never_the_raw_name(
    lib: ModuleType,
    api: FakeLLMAPI,
    url: str,
    meter_provider: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, reader = meter_provider
    transport = CoalescingTransport(meter_provider=provider)
    # Two spellings of one model, and a name nobody prices: two shared flights each.
    names = ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "house-model-7b"]
    api.hold = threading.Event()
    async with lib.AsyncClient(
        transport=transport, base_url=url, headers={"authorization": "Bearer k"}
    ) as client:
        async with anyio.create_task_group() as group:
            for name in names:
                for _ in range(2):
                    body = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
                    group.start_soon(partial(client.post, "/v1/chat/completions", json=body))
            await until(lambda: transport.stats().waiters == 6 and api.held == 3)
            api.hold.set()
    priced()
    points = cost_points(reader)
    assert [dict(point.attributes or {}) for point in points] == [
        {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}
    ]
    stats = transport.stats()
    assert Decimal(str(points[0].value)) == pytest.approx(stats.cost_saved)
    assert stats.cost_unpriced == 1


OFFLINE = """
import socket, orjson, httpx
def refuse(*args, **kwargs):
    raise OSError("network blocked by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
from functools import partial
from datetime import datetime, timezone
from httpx_coalesce._cost import price_of
from httpx_coalesce._telemetry import INSTRUMENTS
from httpx_coalesce._usage import read_answer
document = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}
answer = read_answer(orjson.dumps(document), b"application/json")
price = price_of(answer, httpx.URL("https://api.openai.com/v1/chat/completions"), datetime.now(timezone.utc))
print(price.usd)
"""


def test_the_price_list_is_read_offline_from_the_package() -> None:
    result = subprocess.run([sys.executable, "-c", OFFLINE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert Decimal(result.stdout.strip()) > 0
