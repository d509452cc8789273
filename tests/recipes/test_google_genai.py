"""Recipe: Google Gen AI (``google-genai``, on httpx2 or httpx). See docs/recipes.md."""

from __future__ import annotations

import google.genai as genai
import httpx2
import pytest
from google.genai import types

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

MODEL = "gemini-2.5-flash"
PATH = f"/v1/models/{MODEL}:generateContent"
STREAM_PATH = f"/v1/models/{MODEL}:streamGenerateContent"


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    options = types.HttpOptions(base_url=url, httpx_async_client=httpx2.AsyncClient(transport=transport))
    async with genai.Client(api_key="AIza-test", http_options=options).aio as client:

        async def ask() -> str:
            answer = await client.models.generate_content(model=MODEL, contents=PROMPT)
            return answer.text or ""

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    options = types.HttpOptions(base_url=url, httpx_async_client=httpx2.AsyncClient(transport=transport))
    async with genai.Client(api_key="AIza-test", http_options=options).aio as client:

        async def stream() -> str:
            chunks = await client.models.generate_content_stream(model=MODEL, contents=PROMPT)
            return "".join([chunk.text or "" async for chunk in chunks])

        answers = await overlap(api, transport, stream, stream=True)
        assert_one_upstream_call(api, transport, STREAM_PATH, answers)


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    options = types.HttpOptions(base_url=url, httpx_client=httpx2.Client(transport=transport))
    with genai.Client(api_key="AIza-test", http_options=options) as client:

        def ask() -> str:
            return client.models.generate_content(model=MODEL, contents=PROMPT).text or ""

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
