"""The SDKs' own retries coalesce again: N callers cost one upstream call per attempt, not N.

Every caller of a flight gets the flight's 429/500, and every SDK retries it with a request that differs only
in ``x-stainless-retry-count`` (left out of the key), so the retries meet in a new flight. The fake API holds
each attempt until all callers have joined it, so the counts are exact.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until
from ..support.choreography import Conductor, overlap, overlap_threads
from .support import (
    CHAT,
    CLAUDE,
    GPT,
    MESSAGES,
    Direct,
    MakeTransport,
    N,
    anthropic_client,
    async_anthropic_client,
    async_openai_client,
    chat_messages,
    chunks_text,
    claude_messages,
    completion_text,
    message_text,
    openai_client,
)


@pytest.fixture
def transport(make_transport: MakeTransport) -> CoalescingTransport:
    return make_transport()


def assert_one_flight_per_attempt(api: FakeLLMAPI, transport: CoalescingTransport, attempts: int) -> None:
    assert api.hits == attempts
    assert [headers["x-stainless-retry-count"] for headers in api.seen_headers] == [
        str(attempt) for attempt in range(attempts)
    ]
    stats = transport.stats()
    assert (stats.requests, stats.upstream_calls, stats.coalesced) == (
        N * attempts,
        attempts,
        (N - 1) * attempts,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 500])
async def test_openai_retries_after_a_shared_error_coalesce_again(
    status: int, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("retry me")
    api.script(CHAT, [status])
    async with async_openai_client(url, transport, max_retries=2) as client:

        async def ask() -> ChatCompletion:
            return await client.chat.completions.create(model=GPT, messages=chat_messages("retry me"))

        completions = await overlap(Conductor(api, transport, N, attempts=2), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=2)
    assert {completion_text(completion) for completion in completions} == {expected}


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 500])
async def test_anthropic_retries_after_a_shared_error_coalesce_again(
    status: int, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("retry me")
    api.script(MESSAGES, [status])
    async with async_anthropic_client(url, transport, max_retries=2) as client:

        async def ask() -> Message:
            return await client.messages.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("retry me")
            )

        messages = await overlap(Conductor(api, transport, N, attempts=2), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=2)
    assert {message_text(message) for message in messages} == {expected}


def test_openai_retries_in_threads_coalesce_at_every_attempt(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("threads retry")
    api.script(CHAT, [500, 429])
    with openai_client(url, transport, max_retries=2) as client:

        def ask() -> ChatCompletion:
            return client.chat.completions.create(model=GPT, messages=chat_messages("threads retry"))

        completions = overlap_threads(Conductor(api, transport, N, attempts=3), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=3)
    assert {completion_text(completion) for completion in completions} == {expected}


def test_anthropic_retries_in_threads_coalesce_at_every_attempt(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("threads retry")
    api.script(MESSAGES, [529, 429])
    with anthropic_client(url, transport, max_retries=2) as client:

        def ask() -> Message:
            return client.messages.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("threads retry")
            )

        messages = overlap_threads(Conductor(api, transport, N, attempts=3), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=3)
    assert {message_text(message) for message in messages} == {expected}


@pytest.mark.anyio
async def test_openai_stream_retries_coalesce_and_every_caller_reads_the_final_stream(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("stream retry")
    api.script(CHAT, [429, 500])
    async with async_openai_client(url, transport, max_retries=2) as client:

        async def ask() -> list[ChatCompletionChunk]:
            stream = await client.chat.completions.create(
                model=GPT, messages=chat_messages("stream retry"), stream=True
            )
            return [chunk async for chunk in stream]

        results = await overlap(Conductor(api, transport, N, attempts=3, stream=True), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=3)
    assert {chunks_text(chunks) for chunks in results} == {expected}
    await until(lambda: api.streams_completed + api.streams_aborted >= 1)  # counted after its last send
    assert (api.streams_completed, api.streams_aborted) == (1, 0)


@pytest.mark.anyio
async def test_anthropic_stream_helper_retries_coalesce_and_every_caller_reads_the_final_stream(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("stream retry")
    api.script(MESSAGES, [529, 500])
    async with async_anthropic_client(url, transport, max_retries=2) as client:

        async def ask() -> str:
            async with client.messages.stream(
                model=CLAUDE, max_tokens=8, messages=claude_messages("stream retry")
            ) as stream:
                return message_text(await stream.get_final_message())

        texts = await overlap(Conductor(api, transport, N, attempts=3, stream=True), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=3)
    assert set(texts) == {expected}


@pytest.mark.anyio
async def test_exhausted_retries_give_every_caller_its_own_copy_of_the_same_error(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    api.script(CHAT, [429, 429])
    async with async_openai_client(url, transport, max_retries=1) as client:

        async def ask() -> Any:
            try:
                await client.chat.completions.create(model=GPT, messages=chat_messages("give up"))
            except openai.RateLimitError as error:
                return error
            raise AssertionError("the retries should have run out")

        errors = await overlap(Conductor(api, transport, N, attempts=2), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=2)
    assert {error.status_code for error in errors} == {429}
    assert {error.request_id for error in errors} == {"req_fake00000002"}
    assert len({id(error) for error in errors}) == N
    assert len({id(error.response) for error in errors}) == N


def test_anthropic_exhausted_retries_raise_in_every_thread(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    api.script(MESSAGES, [529, 529])
    with anthropic_client(url, transport, max_retries=1) as client:

        def ask() -> anthropic.APIStatusError:
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(model=CLAUDE, max_tokens=8, messages=claude_messages("give up"))
            return caught.value

        errors = overlap_threads(Conductor(api, transport, N, attempts=2), [ask] * N)
    assert_one_flight_per_attempt(api, transport, attempts=2)
    assert {error.status_code for error in errors} == {529}
