"""Recipe: LangChain's ``ChatOpenAI`` (``langchain-openai``, through the OpenAI SDK on httpx2)."""

from __future__ import annotations

import httpx2
import pytest
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

PATH = "/v1/chat/completions"


def chat(
    url: str, http_client: httpx2.Client | None = None, http_async_client: httpx2.AsyncClient | None = None
) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=url + "/v1",
        api_key=SecretStr("sk-test"),
        http_client=http_client,
        http_async_client=http_async_client,
    )


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx2.AsyncClient(transport=transport) as http_async_client:
        model = chat(url, http_async_client=http_async_client)

        async def ask() -> str:
            return (await model.ainvoke(PROMPT)).text

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with httpx2.AsyncClient(transport=transport) as http_async_client:
        model = chat(url, http_async_client=http_async_client)

        async def stream() -> str:
            return "".join([chunk.text async for chunk in model.astream(PROMPT)])

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with httpx2.Client(transport=transport) as http_client:
        model = chat(url, http_client=http_client)

        def ask() -> str:
            return model.invoke(PROMPT).text

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
