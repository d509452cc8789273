"""Recipe: Cohere (``cohere`` v2 chat, on httpx). See docs/recipes.md."""

from __future__ import annotations

import cohere
import httpx
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = [
    pytest.mark.recipes,
    # The SDK reads pydantic v1 attributes on every event; nothing this test can change.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MODEL = "command-a-03-2025"
PATH = "/v2/chat"


def text(answer: cohere.V2ChatResponse) -> str:
    return "".join(
        item.text
        for item in answer.message.content or []
        if isinstance(item, cohere.TextAssistantMessageResponseContentItem)
    )


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx.AsyncClient(transport=transport) as http_client:
        client = cohere.AsyncClientV2(api_key="co-test", base_url=url, httpx_client=http_client)

        async def ask() -> str:
            return text(await client.chat(model=MODEL, messages=[cohere.UserChatMessageV2(content=PROMPT)]))

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx.AsyncClient(transport=transport) as http_client:
        client = cohere.AsyncClientV2(api_key="co-test", base_url=url, httpx_client=http_client)

        async def stream() -> str:
            pieces: list[str] = []
            async for event in client.chat_stream(
                model=MODEL, messages=[cohere.UserChatMessageV2(content=PROMPT)]
            ):
                if isinstance(event, cohere.ContentDeltaV2ChatStreamResponse) and event.delta is not None:
                    message = event.delta.message
                    if message is not None and message.content is not None and message.content.text:
                        pieces.append(message.content.text)
            return "".join(pieces)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with httpx.Client(transport=transport) as http_client:
        client = cohere.ClientV2(api_key="co-test", base_url=url, httpx_client=http_client)

        def ask() -> str:
            return text(client.chat(model=MODEL, messages=[cohere.UserChatMessageV2(content=PROMPT)]))

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))


def test_without_an_http_client_the_async_client_is_aiohttp_when_it_is_installed() -> None:
    # The pitfall the recipe warns of: with httpx-aiohttp installed (fireworks-ai pulls it in), the default
    # async client is not httpx's at all, so no httpx transport can ever sit under it.
    pytest.importorskip("httpx_aiohttp")
    client = cohere.AsyncClientV2(api_key="co-test")
    http_client = client._client_wrapper.httpx_client.httpx_client
    assert type(http_client).__module__.startswith("httpx_aiohttp")
