"""Recipe: Anthropic (``anthropic`` 2.x, on httpx2). See docs/recipes.md."""

from __future__ import annotations

import httpx2
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import TextBlock

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

MODEL = "claude-haiku-4-5"
PATH = "/v1/messages"


def text(content: object) -> str:
    assert isinstance(content, TextBlock)
    return content.text


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncAnthropic(
        base_url=url, api_key="sk-ant-test", http_client=httpx2.AsyncClient(transport=transport)
    ) as client:

        async def ask() -> str:
            message = await client.messages.create(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": PROMPT}]
            )
            return text(message.content[0])

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncAnthropic(
        base_url=url, api_key="sk-ant-test", http_client=httpx2.AsyncClient(transport=transport)
    ) as client:

        async def stream() -> str:
            async with client.messages.stream(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": PROMPT}]
            ) as events:
                return await events.get_final_text()

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with Anthropic(
        base_url=url, api_key="sk-ant-test", http_client=httpx2.Client(transport=transport)
    ) as client:

        def ask() -> str:
            message = client.messages.create(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": PROMPT}]
            )
            return text(message.content[0])

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
