"""The gateway's /metrics shows what sharing saved in dollars, by provider and model."""

from __future__ import annotations

from collections.abc import Callable

import genai_prices
import httpx
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from .conftest import GatewayProcess, wait_for

COST = "httpx_coalesce_cost_saved_USD_total"


def test_metrics_show_the_cost_a_window_hit_saved(
    start_gateway: Callable[..., GatewayProcess],
    fake_api: FakeLLMAPI,
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
) -> None:
    gateway = start_gateway("--route", f"/fake={fake_api_server[1].url}", "--window", "60")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "what did it save?"}]}
    for _ in range(2):
        response = httpx.post(
            gateway.url + "/fake/v1/chat/completions",
            json=chat,
            headers={"authorization": "Bearer sk-one"},
            timeout=15,
        )
        assert response.status_code == 200
    assert fake_api.hits == 1
    usage = response.json()["usage"]
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]),
        "gpt-4o-mini",
        provider_id="openai",
    ).total_price
    labels = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o-mini"}
    wait_for(lambda: gateway.metric(COST, **labels) > 0)
    assert gateway.metric(COST, **labels) == pytest.approx(float(price))
