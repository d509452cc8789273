"""The openai SDK (3.x) over CoalescingTransport: httpx2 and plain httpx clients, sync and async.

Each test makes its callers overlap on conditions (see ``support.Conductor``), then checks the server saw one
upstream call and every caller got the whole, correct answer, the same for all.
"""

from __future__ import annotations

import threading
from functools import partial
from types import ModuleType
from typing import Any

import anyio
import pytest
from openai import AsyncStream
from openai.lib.streaming.chat import ChatCompletionStreamEvent
from openai.lib.streaming.responses import ResponseStreamEvent
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion
from openai.types.responses import ParsedResponse, Response, ResponseTextDeltaEvent
from pydantic import BaseModel

from httpx_coalesce import CoalesceInfo, CoalescingTransport
from httpx_coalesce._demo.fake_api import DEFAULT_CHUNKS, FakeLLMAPI

from ..conftest import until
from ..support.choreography import Conductor, overlap, overlap_threads
from .support import (
    CHAT,
    GPT,
    RESPONSES,
    Direct,
    MakeTransport,
    N,
    async_openai_client,
    chat_messages,
    chunks_text,
    completion_text,
    dumps,
    openai_client,
)


class Verdict(BaseModel):
    """A structured-output format for the ``parse`` helpers."""

    label: str
    score: int
    reasons: list[str]


@pytest.fixture
def transport(make_transport: MakeTransport) -> CoalescingTransport:
    return make_transport()


def coalesce_info(response: Any) -> CoalesceInfo:
    info = response.extensions["coalesce"]
    assert isinstance(info, CoalesceInfo)
    return info


def assert_one_flight_for_all(transport: CoalescingTransport, callers: int) -> None:
    stats = transport.stats()
    assert (stats.requests, stats.upstream_calls, stats.coalesced) == (callers, 1, callers - 1)


# ----------------------------------------------------------------------------------- one caller


def test_a_chat_completion_through_the_transport_is_the_direct_answer(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("hello there")
    with openai_client(url, transport, lib) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=GPT, messages=chat_messages("hello there")
        )
    assert completion_text(raw.parse()) == expected
    assert raw.headers["x-fake-hit"] == "1"
    info = coalesce_info(raw.http_response)
    assert (info.leader, info.callers, info.from_window) == (True, 1, False)
    assert api.hits == 1


# ------------------------------------------------------------------------------ chat completions


@pytest.mark.anyio
async def test_fifty_concurrent_identical_chat_completions_make_one_upstream_call(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    callers = 50
    expected = direct.chat("amortization schedule")
    async with async_openai_client(url, transport, lib) as client:

        async def ask() -> ChatCompletion:
            return await client.chat.completions.create(
                model=GPT, messages=chat_messages("amortization schedule")
            )

        completions = await overlap(Conductor(api, transport, callers), [ask] * callers)
    assert api.hits_by_path == {CHAT: 1}
    assert {completion_text(completion) for completion in completions} == {expected}
    assert len({completion.id for completion in completions}) == 1
    assert_one_flight_for_all(transport, callers)


@pytest.mark.anyio
async def test_concurrent_identical_chat_streams_give_every_caller_every_chunk(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("stream it")
    async with async_openai_client(url, transport, lib) as client:

        async def ask() -> list[ChatCompletionChunk]:
            stream = await client.chat.completions.create(
                model=GPT,
                messages=chat_messages("stream it"),
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    await until(lambda: api.streams_completed + api.streams_aborted >= 1)  # counted after its last send
    assert (api.streams_completed, api.streams_aborted) == (1, 0)
    first = results[0]
    assert all(dumps(chunks) == dumps(first) for chunks in results)
    assert chunks_text(first) == expected
    # role chunk, the content chunks, the finish chunk, the usage chunk
    assert len(first) == DEFAULT_CHUNKS + 3
    assert first[-1].usage is not None
    assert_one_flight_for_all(transport, N)


def test_threads_sharing_a_sync_client_make_one_upstream_call(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("threads")
    with openai_client(url, transport, lib) as client:

        def ask() -> ChatCompletion:
            return client.chat.completions.create(model=GPT, messages=chat_messages("threads"))

        completions = overlap_threads(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert {completion_text(completion) for completion in completions} == {expected}
    assert len({completion.id for completion in completions}) == 1
    assert_one_flight_for_all(transport, N)


def test_threads_with_sync_clients_of_their_own_on_one_transport_make_one_upstream_call(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("one transport")
    clients = [openai_client(url, transport, lib) for _ in range(N)]
    try:
        calls = [
            partial(client.chat.completions.create, model=GPT, messages=chat_messages("one transport"))
            for client in clients
        ]
        completions: list[ChatCompletion] = overlap_threads(Conductor(api, transport, N), calls)
    finally:
        for client in clients:
            client.close()
    assert api.hits == 1
    assert {completion_text(completion) for completion in completions} == {expected}
    assert_one_flight_for_all(transport, N)


def test_threads_sharing_a_sync_client_read_one_stream(
    lib: ModuleType, url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("thread stream")
    with openai_client(url, transport, lib) as client:

        def ask() -> list[ChatCompletionChunk]:
            return list(
                client.chat.completions.create(
                    model=GPT, messages=chat_messages("thread stream"), stream=True
                )
            )

        results = overlap_threads(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(dumps(chunks) == dumps(results[0]) for chunks in results)
    assert chunks_text(results[0]) == expected
    assert [chunk.choices[0].finish_reason for chunk in results[0]][-1] == "stop"
    assert_one_flight_for_all(transport, N)


@pytest.mark.anyio
async def test_a_caller_closing_a_shared_stream_early_leaves_it_whole_for_the_others(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("leave early")
    gate = api.gate = threading.Event()
    readers: list[list[ChatCompletionChunk]] = []
    first_only: list[ChatCompletionChunk] = []
    async with async_openai_client(url, transport) as client:

        async def open_stream() -> AsyncStream[ChatCompletionChunk]:
            return await client.chat.completions.create(
                model=GPT, messages=chat_messages("leave early"), stream=True
            )

        async def read_all() -> None:
            readers.append([chunk async for chunk in await open_stream()])

        async def leave_early() -> None:
            stream = await open_stream()
            async for chunk in stream:
                first_only.append(chunk)
                break
            await stream.close()

        try:
            async with anyio.create_task_group() as group:
                for _ in range(N - 1):
                    group.start_soon(read_all)
                await until(lambda: transport.stats().waiters == N - 1)
                group.start_soon(leave_early)
                # It joined, read the one event the gate let out, and left: the flight goes on.
                await until(lambda: len(first_only) == 1 and transport.stats().waiters == N - 1)
                gate.set()
        finally:
            gate.set()
    # The server counts a stream as ended after its last send returns, which may be just
    # after the client read the last byte: wait for its count, then check how it ended.
    await until(lambda: api.streams_completed + api.streams_aborted >= 1)
    assert (api.streams_completed, api.streams_aborted) == (1, 0)
    assert api.hits == 1
    assert len(readers) == N - 1
    assert all(dumps(chunks) == dumps(readers[0]) for chunks in readers)
    assert chunks_text(readers[0]) == expected
    assert dumps(first_only) == dumps(readers[0][:1])


# ------------------------------------------------------------------------------------- responses


@pytest.mark.anyio
async def test_concurrent_identical_responses_make_one_upstream_call(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.response("summarise", instructions="be brief")
    async with async_openai_client(url, transport) as client:

        async def ask() -> Response:
            return await client.responses.create(model=GPT, input="summarise", instructions="be brief")

        responses = await overlap(Conductor(api, transport, N), [ask] * N)
    assert api.hits_by_path == {RESPONSES: 1}
    assert {response.output_text for response in responses} == {expected}
    assert len({response.id for response in responses}) == 1


@pytest.mark.anyio
async def test_concurrent_identical_response_streams_give_every_caller_every_event(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.response("stream the response")
    async with async_openai_client(url, transport) as client:

        async def ask() -> list[Any]:
            stream = await client.responses.create(model=GPT, input="stream the response", stream=True)
            return [event async for event in stream]

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(dumps(events) == dumps(results[0]) for events in results)
    deltas = [event.delta for event in results[0] if isinstance(event, ResponseTextDeltaEvent)]
    assert "".join(deltas) == expected
    assert results[0][-1].type == "response.completed"


# ------------------------------------------------------------------ raw and streaming responses


@pytest.mark.anyio
async def test_with_raw_response_gives_every_caller_the_shared_answer_and_its_own_coalesce_info(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("raw")
    async with async_openai_client(url, transport) as client:

        async def ask() -> Any:
            return await client.chat.completions.with_raw_response.create(
                model=GPT, messages=chat_messages("raw")
            )

        raws = await overlap(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert {raw.headers["x-fake-hit"] for raw in raws} == {"1"}
    assert {raw.status_code for raw in raws} == {200}
    assert {completion_text(raw.parse()) for raw in raws} == {expected}
    infos = [coalesce_info(raw.http_response) for raw in raws]
    assert sum(info.leader for info in infos) == 1
    assert len({info.flight_id for info in infos}) == 1
    assert len({id(raw.http_response) for raw in raws}) == N


@pytest.mark.anyio
async def test_with_streaming_response_gives_every_caller_every_line(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    async with async_openai_client(url, transport) as client:

        async def ask() -> list[str]:
            async with client.chat.completions.with_streaming_response.create(
                model=GPT, messages=chat_messages("lines"), stream=True
            ) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                return [line async for line in response.iter_lines()]

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(lines == results[0] for lines in results)
    data = [line for line in results[0] if line.startswith("data: ")]
    assert len(data) == DEFAULT_CHUNKS + 3  # role, content chunks, finish, [DONE]
    assert data[-1] == "data: [DONE]"


def test_with_streaming_response_parses_for_every_thread(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("parse later")
    with openai_client(url, transport) as client:

        def ask() -> ChatCompletion:
            with client.chat.completions.with_streaming_response.create(
                model=GPT, messages=chat_messages("parse later")
            ) as response:
                return response.parse()

        completions = overlap_threads(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert {completion_text(completion) for completion in completions} == {expected}


# ---------------------------------------------------------------------- structured-output helpers


@pytest.mark.anyio
async def test_chat_completions_parse_gives_every_caller_the_parsed_object(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    reference = (
        direct.openai.chat.completions.parse(
            model=GPT, messages=chat_messages("judge"), response_format=Verdict
        )
        .choices[0]
        .message.parsed
    )
    api.reset()
    assert isinstance(reference, Verdict)
    async with async_openai_client(url, transport) as client:

        async def ask() -> ParsedChatCompletion[Verdict]:
            return await client.chat.completions.parse(
                model=GPT, messages=chat_messages("judge"), response_format=Verdict
            )

        completions = await overlap(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert [completion.choices[0].message.parsed for completion in completions] == [reference] * N


def test_responses_parse_gives_every_thread_the_parsed_object(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    reference = direct.openai.responses.parse(model=GPT, input="judge", text_format=Verdict).output_parsed
    api.reset()
    assert isinstance(reference, Verdict)
    with openai_client(url, transport) as client:

        def ask() -> ParsedResponse[Verdict]:
            return client.responses.parse(model=GPT, input="judge", text_format=Verdict)

        responses = overlap_threads(Conductor(api, transport, N), [ask] * N)
    assert api.hits == 1
    assert [response.output_parsed for response in responses] == [reference] * N


def test_chat_completions_stream_helper_gives_every_thread_the_same_events(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("helper")
    with openai_client(url, transport) as client:

        def ask() -> tuple[list[ChatCompletionStreamEvent[None]], ParsedChatCompletion[None]]:
            with client.chat.completions.stream(model=GPT, messages=chat_messages("helper")) as stream:
                events = list(stream)
                return events, stream.get_final_completion()

        results = overlap_threads(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(dumps(events) == dumps(results[0][0]) for events, _ in results)
    assert {completion_text(final) for _, final in results} == {expected}
    assert "content.done" in [event.type for event in results[0][0]]


@pytest.mark.anyio
async def test_responses_stream_helper_with_a_text_format_gives_every_caller_the_parsed_object(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    reference = direct.openai.responses.parse(model=GPT, input="verdict", text_format=Verdict).output_parsed
    api.reset()
    async with async_openai_client(url, transport) as client:

        async def ask() -> tuple[list[ResponseStreamEvent[Verdict]], ParsedResponse[Verdict]]:
            async with client.responses.stream(model=GPT, input="verdict", text_format=Verdict) as stream:
                events = [event async for event in stream]
                return events, await stream.get_final_response()

        results = await overlap(Conductor(api, transport, N, stream=True), [ask] * N)
    assert api.hits == 1
    assert all(dumps(events) == dumps(results[0][0]) for events, _ in results)
    assert [final.output_parsed for _, final in results] == [reference] * N


# ---------------------------------------------------------------------------- other endpoints


@pytest.mark.anyio
async def test_concurrent_identical_embeddings_make_one_upstream_call(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    async with async_openai_client(url, transport) as client:

        async def embed() -> CreateEmbeddingResponse:
            return await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])

        results = await overlap(Conductor(api, transport, N), [embed] * N)
    assert api.hits == 1
    vectors = [[item.embedding for item in result.data] for result in results]
    assert all(vector == vectors[0] for vector in vectors)
    assert len(vectors[0]) == 2
    assert len(vectors[0][0]) == api.embedding_dims


@pytest.mark.anyio
async def test_concurrent_model_listings_make_one_upstream_call(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    async with async_openai_client(url, transport) as client:

        async def listing() -> list[Model]:
            return [model async for model in client.models.list()]

        results = await overlap(Conductor(api, transport, N), [listing] * N)
    assert api.hits_by_path == {"/v1/models": 1}
    assert all(models == results[0] for models in results)
    assert GPT in {model.id for model in results[0]}
