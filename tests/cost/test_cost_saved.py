"""What sharing saved in dollars: shared LLM answers priced from genai-prices, off the callers' path.

The answers come from the fake LLM API on loopback (OpenAI's and Anthropic's shapes, JSON and SSE), so the
provider is found by the model's name; the expected price is genai-prices' own for the answer's usage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from types import ModuleType
from typing import Any

import anyio
import genai_prices
import httpx
import pytest

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until, until_sync
from .conftest import priced

MakeTransport = Callable[..., CoalescingTransport]

N = 5
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"


def chat(model: str, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "price me"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return "/v1/chat/completions", body, {"authorization": "Bearer sk-test"}


def messages(model: str, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "price me"}],
        "stream": stream,
    }
    return "/v1/messages", body, {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def list_price(api: FakeLLMAPI, provider: str, model: str) -> Decimal:
    """genai-prices' price of one of the fake API's answers, from the tokens it billed for it."""
    bill = api.bill("sk-test" if provider == "openai" else "sk-ant-test")
    assert bill.answers == 1
    usage = genai_prices.Usage(input_tokens=bill.input_tokens, output_tokens=bill.output_tokens)
    return genai_prices.calc_price(usage, model, provider_id=provider).total_price


async def burst(
    lib: ModuleType, transport: CoalescingTransport, api: FakeLLMAPI, url: str, request: tuple[Any, ...]
) -> list[Any]:
    """N identical calls that share one flight: the API holds its answer until all have joined."""
    path, body, headers = request
    api.hold = threading.Event()
    answers: list[Any] = []
    async with lib.AsyncClient(transport=transport, base_url=url, headers=headers) as client:

        async def call() -> None:
            response = await client.post(path, json=body)
            assert response.status_code == 200, response.text
            answers.append(response.content)

        async with anyio.create_task_group() as group:
            for _ in range(N):
                group.start_soon(call)
            await until(lambda: transport.stats().waiters == N and api.held == 1)
            api.hold.set()
    return answers


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("provider", "model", "shape"), [("openai", GPT, chat), ("anthropic", CLAUDE, messages)]
)
async def test_each_follower_saves_one_call_at_the_models_list_price(
    lib: ModuleType,
    api: FakeLLMAPI,
    url: str,
    make_transport: MakeTransport,
    stream: bool,
    provider: str,
    model: str,
    shape: Any,
) -> None:
    transport = make_transport()
    answers = await burst(lib, transport, api, url, shape(model, stream))
    assert len(set(answers)) == 1
    assert api.hits == 1
    priced()
    price = list_price(api, provider, model)
    assert price > 0
    stats = transport.stats()
    assert stats.cost_saved == price * (N - 1)
    assert dict(stats.cost_saved_by_model) == {model: price * (N - 1)}
    assert isinstance(stats.cost_saved, Decimal)
    assert stats.cost_unpriced == 0
    assert (
        stats.tokens_saved == (N - 1) * api.bill("sk-test" if provider == "openai" else "sk-ant-test").tokens
    )


def test_threads_sharing_a_flight_save_its_price_too(
    lib: ModuleType, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    path, body, headers = chat(GPT, stream=True)
    api.hold = threading.Event()
    with lib.Client(transport=transport, base_url=url, headers=headers) as client:
        threads = [
            threading.Thread(target=client.post, args=(path,), kwargs={"json": body}) for _ in range(N)
        ]
        for thread in threads:
            thread.start()
        until_sync(lambda: transport.stats().waiters == N and api.held == 1)
        api.hold.set()
        for thread in threads:
            thread.join()
    priced()
    assert transport.stats().cost_saved == list_price(api, "openai", GPT) * (N - 1)


@pytest.mark.anyio
async def test_window_hits_save_one_call_each(
    lib: ModuleType, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(window=60.0)
    path, body, headers = chat(GPT, stream=False)
    async with lib.AsyncClient(transport=transport, base_url=url, headers=headers) as client:
        for _ in range(3):
            assert (await client.post(path, json=body)).status_code == 200
    assert api.hits == 1
    priced()
    stats = transport.stats()
    assert stats.window_hits == 2
    assert stats.cost_saved == list_price(api, "openai", GPT) * 2


@pytest.mark.anyio
async def test_a_model_without_a_price_counts_its_tokens_but_no_cost(
    lib: ModuleType, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    await burst(lib, transport, api, url, chat("house-model-7b", stream=False))
    priced()
    stats = transport.stats()
    assert stats.tokens_saved == (N - 1) * api.bill("sk-test").tokens > 0
    assert (stats.cost_saved, dict(stats.cost_saved_by_model), stats.cost_unpriced) == (Decimal(0), {}, N - 1)


@pytest.mark.anyio
async def test_an_answer_without_usage_is_neither_priced_nor_unpriced(
    lib: ModuleType, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    api.hold = threading.Event()
    async with lib.AsyncClient(transport=transport, base_url=url) as client:
        async with anyio.create_task_group() as group:
            for _ in range(N):
                group.start_soon(client.get, "/v1/models")
            await until(lambda: transport.stats().waiters == N and api.held == 1)
            api.hold.set()
    priced()
    stats = transport.stats()
    assert (stats.coalesced, stats.cost_saved, stats.cost_unpriced) == (N - 1, Decimal(0), 0)


@pytest.mark.anyio
@pytest.mark.parametrize("failure", ["raises", "not installed", "worker far behind"])
async def test_a_failing_price_list_never_reaches_a_caller(
    lib: ModuleType,
    api: FakeLLMAPI,
    url: str,
    make_transport: MakeTransport,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    from httpx_coalesce import _cost

    if failure == "raises":

        def broken(*args: object, **kwargs: object) -> Any:
            raise RuntimeError("the price list is broken")

        monkeypatch.setattr(genai_prices, "calc_price", broken)
        monkeypatch.setattr(genai_prices, "extract_usage", broken)
    elif failure == "not installed":
        monkeypatch.setattr(_cost, "_price_list", lambda: None)
    else:
        monkeypatch.setattr(_cost, "_submit", lambda job: False)
    transport = make_transport()
    answers = await burst(lib, transport, api, url, chat(GPT, stream=False))
    assert len(answers) == N
    if failure != "worker far behind":  # else nothing was handed over: it counted at once
        priced()
    stats = transport.stats()
    assert (stats.coalesced, stats.cost_saved, stats.cost_unpriced) == (N - 1, Decimal(0), N - 1)
    assert stats.tokens_saved > 0


def test_the_price_lookup_runs_in_the_pricer_thread_not_the_callers(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from httpx_coalesce import _cost

    where: list[str] = []
    real = _cost.price_of

    def spy(*args: Any) -> Any:
        where.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(_cost, "price_of", spy)
    transport = make_transport()
    path, body, headers = chat(GPT, stream=False)
    api.hold = threading.Event()
    with httpx.Client(transport=transport, base_url=url, headers=headers) as client:
        threads = [
            threading.Thread(target=client.post, args=(path,), kwargs={"json": body}) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        until_sync(lambda: transport.stats().waiters == 2 and api.held == 1)
        api.hold.set()
        for thread in threads:
            thread.join()
    priced()
    assert where == ["httpx-coalesce-pricer"]
