"""The anthropic SDK (2.x) over CoalescingTransport, in httpx2 clients, sync and async.

anthropic 2.x takes httpx2 clients only; it sends the API key as ``Authorization: Bearer``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import httpx2
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.lib.streaming import ParsedMessageStreamEvent
from anthropic.types import Message, ModelInfo, ParsedMessage, RawMessageStreamEvent
from pydantic import BaseModel

from httpx_coalesce import CoalesceInfo, CoalescingTransport
from httpx_coalesce._demo.fake_api import DEFAULT_CHUNKS, FakeLLMAPI

from ..conftest import until
from ..support.choreography import Conductor, overlap, overlap_threads
from .support import (
    CLAUDE,
    MESSAGES,
    Direct,
    MakeTransport,
    N,
    anthropic_client,
    async_anthropic_client,
    claude_messages,
    dumps,
    message_text,
)

_MESSAGE_EVENT_TYPES = [
    "message_start",
    "content_block_start",
    *["content_block_delta"] * DEFAULT_CHUNKS,
    "content_block_stop",
    "message_delta",
    "message_stop",
]


class Ticket(BaseModel):
    """A structured-output format for ``messages.parse``."""

    title: str
    priority: int
    labels: list[str]


@pytest.fixture
def transport(make_transport: MakeTransport) -> CoalescingTransport:
    return make_transport()


def test_the_sdk_takes_the_transport_in_an_httpx2_client_only(url: str) -> None:
    plain: Any = httpx.Client(transport=CoalescingTransport())
    with pytest.raises(TypeError, match="httpx2"):
        Anthropic(base_url=url, api_key="sk-ant-test", http_client=plain)
    plain_async: Any = httpx.AsyncClient(transport=CoalescingTransport())
    with pytest.raises(TypeError, match="httpx2"):
        AsyncAnthropic(base_url=url, api_key="sk-ant-test", http_client=plain_async)
    with Anthropic(
        base_url=url, api_key="sk-ant-test", http_client=httpx2.Client(transport=CoalescingTransport())
    ):
        pass


def test_a_message_through_the_transport_is_the_direct_answer(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("hello there", system="be terse")
    with anthropic_client(url, transport) as client:
        raw = client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=8, messages=claude_messages("hello there"), system="be terse"
        )
    assert message_text(raw.parse()) == expected
    assert raw.headers["x-fake-hit"] == "1"
    info = raw.http_response.extensions["coalesce"]
    assert isinstance(info, CoalesceInfo)
    assert (info.leader, info.callers) == (True, 1)
    assert api.seen_headers[-1]["authorization"] == "Bearer sk-ant-test"


@pytest.mark.anyio
async def test_concurrent_identical_messages_make_one_upstream_call(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    callers = 50
    expected = direct.message("incident summary")
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> Message:
            return await client.messages.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("incident summary")
            )

        messages = await overlap(Conductor(api, transport, callers), [ask] * callers)
    assert api.hits_by_path == {MESSAGES: 1}
    assert {message_text(message) for message in messages} == {expected}
    assert len({message.id for message in messages}) == 1
    stats = transport.stats()
    assert (stats.upstream_calls, stats.coalesced) == (1, callers - 1)
    assert stats.tokens_saved > 0


@pytest.mark.anyio
async def test_concurrent_identical_message_streams_give_every_caller_every_event(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("stream it")
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> list[RawMessageStreamEvent]:
            stream = await client.messages.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("stream it"), stream=True
            )
            return [event async for event in stream]

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    await until(lambda: api.streams_completed + api.streams_aborted >= 1)  # counted after its last send
    assert (api.streams_completed, api.streams_aborted) == (1, 0)
    assert all(dumps(events) == dumps(results[0]) for events in results)
    assert [event.type for event in results[0]] == _MESSAGE_EVENT_TYPES
    text = "".join(
        event.delta.text
        for event in results[0]
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == expected


def test_threads_sharing_a_sync_client_make_one_upstream_call(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("threads")
    with anthropic_client(url, transport) as client:

        def ask() -> Message:
            return client.messages.create(model=CLAUDE, max_tokens=8, messages=claude_messages("threads"))

        messages = overlap_threads(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert {message_text(message) for message in messages} == {expected}
    assert len({message.id for message in messages}) == 1


def test_threads_with_sync_clients_of_their_own_on_one_transport_make_one_upstream_call(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("one transport")
    clients = [anthropic_client(url, transport) for _ in range(N)]
    try:
        calls = [
            partial(
                client.messages.create, model=CLAUDE, max_tokens=8, messages=claude_messages("one transport")
            )
            for client in clients
        ]
        messages: list[Message] = overlap_threads(Conductor(api, transport, N), calls)
    finally:
        for client in clients:
            client.close()
    assert api.hits == 1
    assert {message_text(message) for message in messages} == {expected}


def test_threads_sharing_a_sync_client_read_one_messages_stream_helper_stream(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("helper", max_tokens=12)
    with anthropic_client(url, transport) as client:

        def ask() -> tuple[list[ParsedMessageStreamEvent[None]], ParsedMessage[None]]:
            with client.messages.stream(
                model=CLAUDE, max_tokens=12, messages=claude_messages("helper")
            ) as stream:
                events = list(stream)
                return events, stream.get_final_message()

        results = overlap_threads(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(dumps(events) == dumps(results[0][0]) for events, _ in results)
    assert {message_text(final) for _, final in results} == {expected}
    assert {final.usage.output_tokens for _, final in results} == {12}


@pytest.mark.anyio
async def test_messages_stream_helper_gives_every_caller_the_text_and_the_final_message(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("async helper")
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> tuple[list[str], ParsedMessage[None]]:
            async with client.messages.stream(
                model=CLAUDE, max_tokens=8, messages=claude_messages("async helper")
            ) as stream:
                pieces = [piece async for piece in stream.text_stream]
                return pieces, await stream.get_final_message()

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert {"".join(pieces) for pieces, _ in results} == {expected}
    assert {len(pieces) for pieces, _ in results} == {8}
    assert {message_text(final) for _, final in results} == {expected}
    assert {final.stop_reason for _, final in results} == {"end_turn"}


@pytest.mark.anyio
async def test_with_raw_response_gives_every_caller_the_shared_answer_and_its_own_coalesce_info(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("raw")
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> tuple[str, str, CoalesceInfo]:
            raw = await client.messages.with_raw_response.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("raw")
            )
            info = raw.http_response.extensions["coalesce"]
            assert isinstance(info, CoalesceInfo)
            return raw.headers["x-fake-hit"], message_text(await raw.parse()), info

        results = await overlap(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert {(hit, text) for hit, text, _ in results} == {("1", expected)}
    assert sum(info.leader for _, _, info in results) == 1
    assert len({info.flight_id for _, _, info in results}) == 1


def test_with_streaming_response_gives_every_thread_every_line(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    with anthropic_client(url, transport) as client:

        def ask() -> list[str]:
            with client.messages.with_streaming_response.create(
                model=CLAUDE, max_tokens=8, messages=claude_messages("lines"), stream=True
            ) as response:
                return list(response.iter_lines())

        results = overlap_threads(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(lines == results[0] for lines in results)
    events = [line.removeprefix("event: ") for line in results[0] if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "ping" in events  # the raw lines still carry what the SDK's iterator drops


@pytest.mark.anyio
async def test_messages_parse_gives_every_caller_the_parsed_object(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    reference = direct.anthropic.messages.parse(
        model=CLAUDE, max_tokens=16, messages=claude_messages("file a ticket"), output_format=Ticket
    ).parsed_output
    api.reset()
    assert isinstance(reference, Ticket)
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> ParsedMessage[Ticket]:
            return await client.messages.parse(
                model=CLAUDE, max_tokens=16, messages=claude_messages("file a ticket"), output_format=Ticket
            )

        messages = await overlap(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert [message.parsed_output for message in messages] == [reference] * N


@pytest.mark.anyio
async def test_messages_stream_with_an_output_format_gives_every_caller_the_parsed_object(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    reference = direct.anthropic.messages.parse(
        model=CLAUDE, max_tokens=16, messages=claude_messages("ticket stream"), output_format=Ticket
    ).parsed_output
    api.reset()
    async with async_anthropic_client(url, transport) as client:

        async def ask() -> Ticket | None:
            async with client.messages.stream(
                model=CLAUDE, max_tokens=16, messages=claude_messages("ticket stream"), output_format=Ticket
            ) as stream:
                return (await stream.get_final_message()).parsed_output

        parsed = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert parsed == [reference] * N


@pytest.mark.anyio
async def test_concurrent_model_listings_make_one_upstream_call(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    async with async_anthropic_client(url, transport) as client:

        async def listing() -> list[ModelInfo]:
            return [model async for model in client.models.list()]

        results = await overlap(Conductor(api, transport, N), [listing] * N)
    assert api.hits_by_path == {"/v1/models": 1}
    assert all(models == results[0] for models in results)
    assert CLAUDE in {model.id for model in results[0]}
