"""Recipes: OpenAI (``openai`` 3.x, on httpx2), and Groq, Together and Fireworks (on httpx), whose SDKs
are generated from OpenAI's and take the same calls. See docs/recipes.md.

Only how each SDK builds its clients differs, so one set of tests runs for each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import groq
import httpx
import httpx2
import pytest
from fireworks import AsyncFireworks, Fireworks
from openai import AsyncOpenAI, OpenAI
from together import AsyncTogether, Together

from httpx_coalesce import CoalescingTransport
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

#: Builds an SDK's client on the transport, for the fake API at a URL. The SDKs' clients are
#: classes of their own; the calls the tests make are the same on each.
MakeClient = Callable[[str, CoalescingTransport], Any]


@dataclass(frozen=True)
class Sdk:
    async_client: MakeClient
    sync_client: MakeClient
    model: str
    path: str = "/v1/chat/completions"


SDKS = {
    "openai": Sdk(
        lambda url, transport: AsyncOpenAI(
            base_url=url + "/v1", api_key="sk-test", http_client=httpx2.AsyncClient(transport=transport)
        ),
        lambda url, transport: OpenAI(
            base_url=url + "/v1", api_key="sk-test", http_client=httpx2.Client(transport=transport)
        ),
        model="gpt-4o-mini",
    ),
    "groq": Sdk(
        lambda url, transport: groq.AsyncGroq(
            base_url=url, api_key="gsk-test", http_client=httpx.AsyncClient(transport=transport)
        ),
        lambda url, transport: groq.Groq(
            base_url=url, api_key="gsk-test", http_client=httpx.Client(transport=transport)
        ),
        model="llama-3.3-70b-versatile",
        path="/openai/v1/chat/completions",
    ),
    "together": Sdk(
        lambda url, transport: AsyncTogether(
            base_url=url, api_key="tgp-test", http_client=httpx.AsyncClient(transport=transport)
        ),
        lambda url, transport: Together(
            base_url=url, api_key="tgp-test", http_client=httpx.Client(transport=transport)
        ),
        model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    "fireworks": Sdk(
        lambda url, transport: AsyncFireworks(
            base_url=url, api_key="fw-test", http_client=httpx.AsyncClient(transport=transport)
        ),
        lambda url, transport: Fireworks(
            base_url=url, api_key="fw-test", http_client=httpx.Client(transport=transport)
        ),
        model="accounts/fireworks/models/llama-v3p3-70b-instruct",
    ),
}


@pytest.fixture(params=list(SDKS))
def sdk(request: pytest.FixtureRequest) -> Sdk:
    return SDKS[request.param]


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    sdk: Sdk, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with sdk.async_client(url, transport) as client:

        async def ask() -> str:
            completion = await client.chat.completions.create(
                model=sdk.model, messages=[{"role": "user", "content": PROMPT}]
            )
            return answer_text(completion)

        assert_one_upstream_call(api, transport, sdk.path, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    sdk: Sdk, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with sdk.async_client(url, transport) as client:

        async def stream() -> str:
            chunks = await client.chat.completions.create(
                model=sdk.model, messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            return await streamed_text(chunks)

        assert_one_upstream_call(api, transport, sdk.path, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(
    sdk: Sdk, api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    with sdk.sync_client(url, transport) as client:

        def ask() -> str:
            completion = client.chat.completions.create(
                model=sdk.model, messages=[{"role": "user", "content": PROMPT}]
            )
            return answer_text(completion)

        assert_one_upstream_call(api, transport, sdk.path, overlap_threads(api, transport, ask))
