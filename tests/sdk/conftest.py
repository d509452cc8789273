"""One fake LLM API server for the whole SDK suite, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI, make_fake_api
from httpx_coalesce._demo.server import LocalServer

from ..conftest import until_sync
from .support import Direct


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[FakeLLMAPI, str]]:
    api = make_fake_api()
    with LocalServer(api.app, on_stop=api.close) as server:
        yield api, server.url


@pytest.fixture
def url(fake_server: tuple[FakeLLMAPI, str]) -> str:
    return fake_server[1]


@pytest.fixture
def api(fake_server: tuple[FakeLLMAPI, str]) -> Iterator[FakeLLMAPI]:
    api = fake_server[0]
    api.latency = api.stream_gap = 0.0
    api.gate = api.hold = None
    api.reset()
    yield api
    # Release whatever a failed test left waiting, and let its streams end before the next test.
    for event in (api.gate, api.hold):
        if event is not None:
            event.set()
    api.gate = api.hold = None
    until_sync(lambda: api.open_streams == 0 and api.held == 0)


@pytest.fixture(scope="session")
def _direct_clients(
    fake_server: tuple[FakeLLMAPI, str],
) -> Iterator[tuple[openai.OpenAI, anthropic.Anthropic]]:
    url = fake_server[1]
    with (
        openai.OpenAI(
            base_url=f"{url}/v1", api_key="sk-test", max_retries=0, http_client=httpx2.Client()
        ) as oai,
        anthropic.Anthropic(
            base_url=url, api_key="sk-ant-test", max_retries=0, http_client=httpx2.Client()
        ) as ant,
    ):
        yield oai, ant


@pytest.fixture
def direct(api: FakeLLMAPI, _direct_clients: tuple[openai.OpenAI, anthropic.Anthropic]) -> Direct:
    """Reference answers from calls that bypass coalescing altogether."""
    return Direct(api, *_direct_clients)
