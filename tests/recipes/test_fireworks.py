"""Recipe: Fireworks (``fireworks-ai``, on httpx). See docs/recipes.md."""

from __future__ import annotations

import httpx
import pytest
from fireworks import AsyncFireworks, Fireworks

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import (
    PROMPT,
    MakeTransport,
    answer_text,
    assert_one_upstream_call,
    overlap,
    overlap_threads,
    streamed_text,
)

pytestmark = pytest.mark.recipes

MODEL = "accounts/fireworks/models/llama-v3p3-70b-instruct"
PATH = "/v1/chat/completions"


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncFireworks(
        base_url=url, api_key="fw-test", http_client=httpx.AsyncClient(transport=transport)
    ) as client:

        async def ask() -> str:
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            return answer_text(completion)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncFireworks(
        base_url=url, api_key="fw-test", http_client=httpx.AsyncClient(transport=transport)
    ) as client:

        async def stream() -> str:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            return await streamed_text(chunks)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with Fireworks(base_url=url, api_key="fw-test", http_client=httpx.Client(transport=transport)) as client:

        def ask() -> str:
            completion = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            return answer_text(completion)

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
