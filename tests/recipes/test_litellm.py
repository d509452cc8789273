"""Recipe: LiteLLM (``litellm``): its shared httpx sessions reach only what it runs through the OpenAI SDK."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import litellm
import pytest
from litellm import CustomStreamWrapper, ModelResponse

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until
from .support import CALLERS, PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = [
    pytest.mark.recipes,
    # Pydantic remarks on LiteLLM's own types when it first builds them; nothing these tests can change.
    pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
]

PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def transport(
    make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CoalescingTransport]:
    transport = make_transport()
    # Set before the first call, as an application would at start-up (see api_key below).
    with httpx.Client(transport=transport) as client_session:
        monkeypatch.setattr(litellm, "client_session", client_session)
        monkeypatch.setattr(litellm, "aclient_session", httpx.AsyncClient(transport=transport))
        yield transport


@pytest.fixture
def api_key(request: pytest.FixtureRequest) -> str:
    # LiteLLM keeps the OpenAI clients it builds, keyed by API key and base URL among others, for an hour:
    # a key of each test's own keeps a client built around an earlier test's session out of this one.
    return f"sk-{request.node.name}"


def text(answer: Any) -> str:
    assert isinstance(answer, ModelResponse)
    content = answer.choices[0].message.content
    assert isinstance(content, str)
    return content


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, api_key: str, transport: CoalescingTransport
) -> None:
    async def ask() -> str:
        return text(
            await litellm.acompletion(
                model="openai/gpt-4o-mini", api_base=url + "/v1", api_key=api_key, messages=MESSAGES
            )
        )

    assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streams_share_one_upstream_call(
    api: FakeLLMAPI, url: str, api_key: str, transport: CoalescingTransport
) -> None:
    async def stream() -> str:
        chunks = await litellm.acompletion(
            model="openai/gpt-4o-mini", api_base=url + "/v1", api_key=api_key, messages=MESSAGES, stream=True
        )
        assert isinstance(chunks, CustomStreamWrapper)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks])

    assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, api_key: str, transport: CoalescingTransport
) -> None:
    def ask() -> str:
        return text(
            litellm.completion(
                model="openai/gpt-4o-mini", api_base=url + "/v1", api_key=api_key, messages=MESSAGES
            )
        )

    assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))


@pytest.mark.anyio
async def test_a_provider_it_does_not_run_through_the_openai_sdk_bypasses_the_session(
    api: FakeLLMAPI, url: str, api_key: str, transport: CoalescingTransport
) -> None:
    # The pitfall the recipe warns of: LiteLLM's own Anthropic client never sees litellm.aclient_session.
    hold = api.hold = threading.Event()

    async def ask() -> None:
        await litellm.acompletion(
            model="anthropic/claude-haiku-4-5", api_base=url, api_key=api_key, messages=MESSAGES, max_tokens=8
        )

    try:
        async with anyio.create_task_group() as group:
            for _ in range(CALLERS):
                group.start_soon(ask)
            await until(lambda: api.held == CALLERS)
            hold.set()
    finally:
        hold.set()
    assert api.hits_by_path == {"/v1/messages": CALLERS}
    assert transport.stats().requests == 0
