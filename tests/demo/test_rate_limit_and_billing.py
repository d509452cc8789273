"""The fake API limits each key's requests per minute and bills each key's tokens, as the real APIs do."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from httpx_coalesce._demo.fake_api import DEMO_PRICES, FakeLLMAPI, Price, RateLimit
from httpx_coalesce._demo.server import LocalServer

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-demo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def api() -> FakeLLMAPI:
    return FakeLLMAPI()


@pytest.fixture
def url(api: FakeLLMAPI) -> Iterator[str]:
    with LocalServer(api.app, on_stop=api.close) as server:
        yield server.url


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(url + CHAT, json=BODY, headers={"authorization": f"Bearer {key}"})


def test_requests_past_a_keys_share_of_the_slice_get_429_with_retry_after(api: FakeLLMAPI, url: str) -> None:
    # A slice of a whole minute cannot end during the test.
    api.rate_limit = RateLimit(requests_per_minute=3, slice_seconds=60)

    statuses = [post(url, "sk-a").status_code for _ in range(3)]
    refused = post(url, "sk-a")

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < float(refused.headers["retry-after-ms"]) <= 60_000
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert api.rate_limited == 1
    assert api.hits == 4  # a refused request still reached the API


def test_each_key_has_a_limit_of_its_own(api: FakeLLMAPI, url: str) -> None:
    api.rate_limit = RateLimit(requests_per_minute=1, slice_seconds=60)

    assert [post(url, key).status_code for key in ("sk-a", "sk-b", "sk-a")] == [200, 200, 429]


def test_reset_forgets_the_slices_and_the_bills(api: FakeLLMAPI, url: str) -> None:
    api.rate_limit = RateLimit(requests_per_minute=1, slice_seconds=60)
    post(url, "sk-a")
    post(url, "sk-a")

    api.reset()

    assert (api.rate_limited, api.bill().answers) == (0, 0)
    assert post(url, "sk-a").status_code == 200


def test_the_openai_sdk_waits_out_the_retry_after_and_succeeds(api: FakeLLMAPI, url: str) -> None:
    api.rate_limit = RateLimit(requests_per_minute=60, slice_seconds=1)
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=2) as client:
        first = client.chat.completions.create(model="gpt-demo", messages=[{"role": "user", "content": "a"}])
        second = client.chat.completions.create(model="gpt-demo", messages=[{"role": "user", "content": "a"}])

    assert first.choices[0].message.content == second.choices[0].message.content
    assert (api.hits, api.rate_limited) == (3, 1)
    assert api.seen_headers[-1]["x-stainless-retry-count"] == "1"


def test_every_answer_is_billed_to_its_key_at_the_price_table(api: FakeLLMAPI, url: str) -> None:
    answer = post(url, "sk-a").json()
    post(url, "sk-b")
    usage = answer["usage"]

    bill = api.bill("sk-a")
    price = DEMO_PRICES["gpt-demo"]
    assert (bill.answers, bill.input_tokens, bill.output_tokens) == (
        1,
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert bill.cost == pytest.approx(price.cost(usage["prompt_tokens"], usage["completion_tokens"]))
    assert api.bill().answers == 2
    assert api.bill("sk-nobody").answers == 0


def test_a_model_missing_from_the_table_is_billed_at_the_default_price(api: FakeLLMAPI, url: str) -> None:
    api.prices = {"*": Price(input_per_million=1_000_000, output_per_million=0)}
    answer = httpx.post(
        url + CHAT,
        json={**BODY, "model": "some-other-model"},
        headers={"authorization": "Bearer sk-a"},
    ).json()

    assert api.bill("sk-a").cost == pytest.approx(answer["usage"]["prompt_tokens"])


def test_a_rate_limited_request_is_not_billed(api: FakeLLMAPI, url: str) -> None:
    api.rate_limit = RateLimit(requests_per_minute=1, slice_seconds=60)
    post(url, "sk-a")
    post(url, "sk-a")

    assert api.bill("sk-a").answers == 1


@pytest.mark.parametrize("arguments", [(0, 1.0), (-5, 1.0), (60, 0.0), (60, float("nan")), (60, 61.0)])
def test_a_rate_limit_refuses_nonsense(arguments: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimit(*arguments)
