"""Recipe: Cerebras (``cerebras-cloud-sdk``, on httpx). See docs/recipes.md."""

from __future__ import annotations

import httpx
import pytest
from cerebras.cloud.sdk import AsyncCerebras, AsyncStream, Cerebras
from cerebras.cloud.sdk.types.chat.chat_completion import ChatChunkResponse, ChatCompletionResponse

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, answer_text, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

MODEL = "llama-3.3-70b"
PATH = "/v1/chat/completions"


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncCerebras(
        base_url=url,
        api_key="csk-test",
        http_client=httpx.AsyncClient(transport=transport),
    ) as client:

        async def ask() -> str:
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            assert isinstance(completion, ChatCompletionResponse)
            return answer_text(completion)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncCerebras(
        base_url=url,
        api_key="csk-test",
        http_client=httpx.AsyncClient(transport=transport),
    ) as client:

        async def stream() -> str:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            assert isinstance(chunks, AsyncStream)
            pieces: list[str] = []
            async for chunk in chunks:
                if isinstance(chunk, ChatChunkResponse) and chunk.choices and chunk.choices[0].delta:
                    pieces.append(chunk.choices[0].delta.content or "")
            return "".join(pieces)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with Cerebras(
        base_url=url,
        api_key="csk-test",
        http_client=httpx.Client(transport=transport),
    ) as client:

        def ask() -> str:
            completion = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            assert isinstance(completion, ChatCompletionResponse)
            return answer_text(completion)

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
