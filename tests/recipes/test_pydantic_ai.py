"""Recipe: Pydantic AI (``pydantic-ai``, its OpenAI model through the OpenAI SDK on httpx2)."""

from __future__ import annotations

import httpx2
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap

pytestmark = pytest.mark.recipes

PATH = "/v1/chat/completions"


def agent(url: str, http_client: httpx2.AsyncClient) -> Agent[None, str]:
    provider = OpenAIProvider(base_url=url + "/v1", api_key="sk-test", http_client=http_client)
    return Agent(OpenAIChatModel("gpt-4o-mini", provider=provider))


@pytest.mark.anyio
async def test_async_runs_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx2.AsyncClient(transport=transport) as http_client:
        assistant = agent(url, http_client)

        async def ask() -> str:
            return (await assistant.run(PROMPT)).output

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streamed_runs_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx2.AsyncClient(transport=transport) as http_client:
        assistant = agent(url, http_client)

        async def stream() -> str:
            async with assistant.run_stream(PROMPT) as run:
                return "".join([piece async for piece in run.stream_text(delta=True)])

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_run_sync_goes_through_the_transport(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    # Pydantic AI has no sync HTTP client: run_sync drives the async one on an event loop of its own, so
    # the client it was given must not be used from any other loop (as with any httpx async client).
    transport = make_transport()
    assistant = agent(url, httpx2.AsyncClient(transport=transport))

    answer = assistant.run_sync(PROMPT).output

    assert answer.endswith(".")
    assert api.hits_by_path == {PATH: 1}
    assert transport.stats().requests == 1
