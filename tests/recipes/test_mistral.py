"""Recipe: Mistral (``mistralai`` 3.x, on httpx2). See docs/recipes.md."""

from __future__ import annotations

import httpx2
import pytest
from mistralai.client import Mistral

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

MODEL = "mistral-small-latest"
PATH = "/v1/chat/completions"


def content(value: object) -> str:
    assert isinstance(value, str)
    return value


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with Mistral(
        api_key="mistral-test", server_url=url, async_client=httpx2.AsyncClient(transport=transport)
    ) as client:

        async def ask() -> str:
            answer = await client.chat.complete_async(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            assert answer.choices
            return content(answer.choices[0].message.content)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with Mistral(
        api_key="mistral-test", server_url=url, async_client=httpx2.AsyncClient(transport=transport)
    ) as client:

        async def stream() -> str:
            events = await client.chat.stream_async(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )
            pieces = [event.data.choices[0].delta.content async for event in events if event.data.choices]
            return "".join(piece for piece in pieces if isinstance(piece, str))

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with Mistral(api_key="mistral-test", server_url=url, client=httpx2.Client(transport=transport)) as client:

        def ask() -> str:
            answer = client.chat.complete(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
            assert answer.choices
            return content(answer.choices[0].message.content)

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
