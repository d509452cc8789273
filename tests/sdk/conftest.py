"""Reference answers for the SDK suite, from calls that bypass the transport (the fake API
and its fixtures are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import Direct


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
