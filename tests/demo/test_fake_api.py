"""The fake LLM API must be indistinguishable from the real services as far as the real SDKs can tell.

Every test here drives the unmodified ``openai`` / ``anthropic`` SDKs (their default http clients, no
coalescing) against the fake server, so the library's own tests can trust that what the fake sends is what the
SDKs would get from the real APIs.
"""

from __future__ import annotations

import base64
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest
from anthropic.types import Message, MessageDeltaUsage, ModelInfo, RawMessageStreamEvent, TextBlock, Usage
from openai.types import CompletionUsage, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseUsage,
)

from httpx_coalesce._demo.fake_api import DEFAULT_CHUNKS, FakeLLMAPI, make_fake_api
from httpx_coalesce._demo.server import LocalServer

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[FakeLLMAPI, LocalServer]]:
    api = make_fake_api()
    with LocalServer(api.app) as server:
        yield api, server


@pytest.fixture
def api(shared: tuple[FakeLLMAPI, LocalServer]) -> Iterator[FakeLLMAPI]:
    api = shared[0]
    api.latency = api.stream_gap = 0.0
    api.gate = api.hold = None
    api.reset()
    yield api
    # Release anything a failed test left waiting, so the shared server's streams can finish.
    for event in (api.gate, api.hold):
        if event is not None:
            event.set()
    api.gate = api.hold = None


@pytest.fixture(scope="module")
def url(shared: tuple[FakeLLMAPI, LocalServer]) -> str:
    return shared[1].url


# Clients are module-scoped because building one costs more than most of these tests.
@pytest.fixture(scope="module")
def oai(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def ant(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def raw(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url) as client:
        yield client


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------------------------- chat completions


def test_chat_completion_parses_with_usage_and_headers(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=GPT, messages=_user("hello there"))
    completion = raw.parse()

    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == GPT
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert isinstance(choice.message, ChatCompletionMessage)
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.message.content
    assert len(choice.message.content.split()) == DEFAULT_CHUNKS
    assert isinstance(completion.usage, CompletionUsage)
    assert completion.usage.completion_tokens == DEFAULT_CHUNKS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + DEFAULT_CHUNKS

    assert raw.headers["x-fake-hit"] == "1"
    assert raw.headers["content-length"] == str(len(raw.http_response.content))
    assert api.hits == 1
    assert api.hits_by_path == {CHAT: 1}
    sent = api.seen_headers[-1]
    assert sent["authorization"] == "Bearer sk-test"
    assert sent["x-stainless-retry-count"] == "0"
    assert b'"hello there"' in api.seen_bodies[-1]


def test_chat_content_is_deterministic_per_request(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    first = oai.chat.completions.create(model=GPT, messages=_user("same"))
    again = oai.chat.completions.create(model=GPT, messages=_user("same"))
    other = oai.chat.completions.create(model=GPT, messages=_user("different"))

    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.id != again.id  # ids name the upstream call, not the request
    assert api.hits == 3


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_sets_answer_length(oai: openai.OpenAI, api: FakeLLMAPI, field: str) -> None:
    completion = oai.chat.completions.create(model=GPT, messages=_user("short"), extra_body={field: 3})
    assert completion.choices[0].message.content is not None
    assert len(completion.choices[0].message.content.split()) == 3
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_chat_stream_with_include_usage(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    expected = oai.chat.completions.create(model=GPT, messages=_user("stream me")).choices[0].message.content
    chunks = list(
        oai.chat.completions.create(
            model=GPT, messages=_user("stream me"), stream=True, stream_options={"include_usage": True}
        )
    )

    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == []
    assert isinstance(last.usage, CompletionUsage)
    assert last.usage.completion_tokens == DEFAULT_CHUNKS
    assert all(c.usage is None for c in chunks[:-1])
    # Counted after the server's last send returns, maybe just after the client read it.
    assert _wait_until(lambda: api.streams_completed == 1)
    assert api.open_streams == 0


def test_chat_stream_without_usage_and_length(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    stream = oai.chat.completions.create(model=GPT, messages=_user("x"), stream=True, max_tokens=20)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    # role chunk + 20 content chunks + finish chunk
    assert len(chunks) == 22
    assert stream.response.headers["content-type"].startswith("text/event-stream")


def test_chat_stream_helper_accumulates(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    expected = oai.chat.completions.create(model=GPT, messages=_user("helper")).choices[0].message.content
    with oai.chat.completions.stream(model=GPT, messages=_user("helper")) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == expected
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.anyio
async def test_chat_async(url: str, api: FakeLLMAPI) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        completion = await client.chat.completions.create(model=GPT, messages=_user("async"))
        stream = await client.chat.completions.create(
            model=GPT, messages=_user("async"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert isinstance(completion, ChatCompletion)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        completion.choices[0].message.content
    )
    assert chunks[-1].usage is not None
    assert api.seen_headers[-1]["x-stainless-async"].startswith("async")


# --------------------------------------------------------------------------------------------- responses

_RESPONSE_EVENT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * DEFAULT_CHUNKS,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_non_stream(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    response = oai.responses.create(model=GPT, input="tell me", instructions="be brief")
    assert isinstance(response, Response)
    assert response.status == "completed"
    message = response.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert isinstance(message.content[0], ResponseOutputText)
    assert len(response.output_text.split()) == DEFAULT_CHUNKS
    assert isinstance(response.usage, ResponseUsage)
    assert response.usage.output_tokens == DEFAULT_CHUNKS
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.instructions == "be brief"
    assert api.hits_by_path == {"/v1/responses": 1}


def test_responses_stream_events(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    expected = oai.responses.create(model=GPT, input=_user("ev")).output_text
    events: list[ResponseStreamEvent] = list(oai.responses.create(model=GPT, input=_user("ev"), stream=True))

    assert [e.type for e in events] == _RESPONSE_EVENT_TYPES
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert "".join(deltas) == expected
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == expected
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == DEFAULT_CHUNKS


def test_responses_stream_helper_and_token_limit(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    with oai.responses.stream(model=GPT, input="helper", max_output_tokens=5) as stream:
        final = stream.get_final_response()
    assert len(final.output_text.split()) == 5
    assert final.usage is not None
    assert final.usage.output_tokens == 5


@pytest.mark.anyio
async def test_responses_async(url: str, api: FakeLLMAPI) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        response = await client.responses.create(model=GPT, input="async")
        stream = await client.responses.create(model=GPT, input="async", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == _RESPONSE_EVENT_TYPES
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == response.output_text


# -------------------------------------------------------------------------------------------- embeddings


def test_embeddings_default_base64_matches_float(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    default = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )

    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    assert b'"encoding_format":"base64"' in api.seen_bodies[0].replace(b" ", b"")
    assert isinstance(default, CreateEmbeddingResponse)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    first, second = (d.embedding for d in floats.data)
    assert len(first) == api.embedding_dims
    assert first != second
    assert math.isclose(math.fsum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


def test_embeddings_dimensions_and_raw_base64(oai: openai.OpenAI, raw: httpx.Client, api: FakeLLMAPI) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input="one", dimensions=7)
    assert len(result.data[0].embedding) == 7
    answer = raw.post(
        "/v1/embeddings",
        json={
            "model": "text-embedding-3-small",
            "input": [1, 2, 3],
            "encoding_format": "base64",
            "dimensions": 4,
        },
    )
    encoded = answer.json()["data"][0]["embedding"]
    assert len(struct.unpack("<4f", base64.b64decode(encoded))) == 4


@pytest.mark.anyio
async def test_embeddings_async(url: str, api: FakeLLMAPI) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        result = await client.embeddings.create(model="text-embedding-3-small", input="async")
    assert len(result.data[0].embedding) == api.embedding_dims


# ------------------------------------------------------------------------------------------------ models


def test_models_in_both_shapes(oai: openai.OpenAI, ant: anthropic.Anthropic, api: FakeLLMAPI) -> None:
    openai_models = list(oai.models.list())
    assert openai_models
    assert all(isinstance(m, Model) for m in openai_models)
    assert GPT in {m.id for m in openai_models}

    claude_models = list(ant.models.list())
    assert all(isinstance(m, ModelInfo) for m in claude_models)
    assert CLAUDE in {m.id for m in claude_models}
    assert api.hits_by_path == {"/v1/models": 2}


def test_health_is_not_a_hit(raw: httpx.Client, api: FakeLLMAPI) -> None:
    response = raw.get("/health")
    assert response.status_code == 200
    assert response.text == "ok"
    assert api.hits == 0


# ---------------------------------------------------------------------------------------------- messages

_MESSAGE_EVENT_TYPES = [
    "message_start",
    "content_block_start",
    *["content_block_delta"] * DEFAULT_CHUNKS,
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def test_messages_non_stream(ant: anthropic.Anthropic, api: FakeLLMAPI) -> None:
    message = ant.messages.create(model=CLAUDE, max_tokens=DEFAULT_CHUNKS, messages=_user("hi"), system="sys")
    assert isinstance(message, Message)
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert isinstance(block, TextBlock)
    assert len(block.text.split()) == DEFAULT_CHUNKS
    assert isinstance(message.usage, Usage)
    assert message.usage.output_tokens == DEFAULT_CHUNKS
    assert message.usage.input_tokens > 0
    sent = api.seen_headers[-1]
    assert "anthropic-version" in sent
    # anthropic 2.x sends the API key as a bearer token, not as x-api-key.
    assert sent["authorization"] == "Bearer sk-ant-test"


def test_messages_stream_raw_events(ant: anthropic.Anthropic, api: FakeLLMAPI) -> None:
    expected = ant.messages.create(model=CLAUDE, max_tokens=8, messages=_user("raw"))
    events: list[RawMessageStreamEvent] = list(
        ant.messages.create(model=CLAUDE, max_tokens=8, messages=_user("raw"), stream=True)
    )
    # The SDK drops the "ping" event itself.
    assert [e.type for e in events] == _MESSAGE_EVENT_TYPES
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    block = expected.content[0]
    assert isinstance(block, TextBlock)
    assert text == block.text
    delta = events[-2]
    assert delta.type == "message_delta"
    assert isinstance(delta.usage, MessageDeltaUsage)
    assert delta.usage.output_tokens == DEFAULT_CHUNKS


def test_messages_stream_helper(ant: anthropic.Anthropic, api: FakeLLMAPI) -> None:
    with ant.messages.stream(model=CLAUDE, max_tokens=12, messages=_user("helper")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 12
    block = final.content[0]
    assert isinstance(block, TextBlock)
    assert block.text == "".join(pieces)
    assert final.usage.output_tokens == 12
    assert final.stop_reason == "end_turn"
    # Counted after the server's last send returns, maybe just after the client read it.
    assert _wait_until(lambda: api.streams_completed == 1)


@pytest.mark.anyio
async def test_messages_async(url: str, api: FakeLLMAPI) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as client:
        message = await client.messages.create(model=CLAUDE, max_tokens=8, messages=_user("async"))
        async with client.messages.stream(model=CLAUDE, max_tokens=8, messages=_user("async")) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    block = message.content[0]
    assert isinstance(block, TextBlock)
    assert block.text == "".join(pieces)
    assert final.usage.output_tokens == 8


# ------------------------------------------------------------------------------------------------ errors

_OPENAI_ERRORS: list[tuple[int, type[openai.APIStatusError], str]] = [
    (400, openai.BadRequestError, "invalid_request_error"),
    (401, openai.AuthenticationError, "invalid_request_error"),
    (429, openai.RateLimitError, "requests"),
    (500, openai.InternalServerError, "server_error"),
    (529, openai.InternalServerError, "server_error"),
]

_ANTHROPIC_ERRORS: list[tuple[int, type[anthropic.APIStatusError], str]] = [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (529, anthropic.OverloadedError, "overloaded_error"),
]


@pytest.mark.parametrize(("status", "error_class", "error_type"), _OPENAI_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_scripted_errors(
    oai: openai.OpenAI,
    api: FakeLLMAPI,
    status: int,
    error_class: type[openai.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    api.script(CHAT, [status])
    with pytest.raises(error_class) as caught:
        oai.chat.completions.create(model=GPT, messages=_user("err"), stream=stream)
    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == error_type
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert caught.value.request_id == "req_fake00000001"
    # The script is spent: the next call succeeds.
    assert oai.chat.completions.create(model=GPT, messages=_user("err")).choices


@pytest.mark.parametrize(("status", "error_class", "error_type"), _ANTHROPIC_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_scripted_errors(
    ant: anthropic.Anthropic,
    api: FakeLLMAPI,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    api.script(MESSAGES, [status])
    with pytest.raises(error_class) as caught:
        ant.messages.create(model=CLAUDE, max_tokens=4, messages=_user("err"), stream=stream)
    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == error_type
    assert ant.messages.create(model=CLAUDE, max_tokens=4, messages=_user("err")).content


def test_header_forced_status_leaves_script_alone(
    oai: openai.OpenAI, ant: anthropic.Anthropic, api: FakeLLMAPI
) -> None:
    api.script(CHAT, [500])
    api.script(MESSAGES, [500])
    tenant = oai.with_options(api_key="sk-other", default_headers={"x-fake-status": "401"})
    with pytest.raises(openai.AuthenticationError):
        tenant.chat.completions.create(model=GPT, messages=_user("who"))
    with pytest.raises(anthropic.AuthenticationError):
        ant.messages.create(
            model=CLAUDE, max_tokens=4, messages=_user("who"), extra_headers={"x-fake-status": "401"}
        )
    assert api.seen_headers[0]["authorization"] == "Bearer sk-other"
    assert api.pending_script(CHAT) == [500]
    assert api.pending_script(MESSAGES) == [500]


@pytest.mark.anyio
async def test_async_error(url: str, api: FakeLLMAPI) -> None:
    api.script(MESSAGES, [529])
    async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as client:
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=CLAUDE, max_tokens=4, messages=_user("x"), stream=True)


def test_error_headers_and_bad_json(raw: httpx.Client, api: FakeLLMAPI) -> None:
    api.script("v1/chat/completions/", [429, 400])  # paths are normalised
    limited = raw.post(CHAT, json={"model": GPT, "messages": _user("x")})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "0"
    assert limited.headers["retry-after-ms"] == str(api.retry_after_ms)
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    bad = raw.post(CHAT, json={"model": GPT, "messages": _user("x")})
    assert bad.status_code == 400
    assert "retry-after" not in bad.headers

    garbage = raw.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"
    claude_garbage = raw.post(MESSAGES, json={"model": CLAUDE, "messages": _user("x")})
    assert claude_garbage.status_code == 400  # max_tokens is required, as upstream
    assert claude_garbage.json()["type"] == "error"

    with pytest.raises(ValueError, match="302"):
        api.script(CHAT, [302])


# ----------------------------------------------------------------------------------------------- retries


def test_openai_retries_through_scripted_errors(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    api.script(CHAT, [429, 500, 200])
    started = time.monotonic()
    completion = oai.with_options(max_retries=2).chat.completions.create(model=GPT, messages=_user("retry"))
    elapsed = time.monotonic() - started

    assert completion.choices[0].message.content
    assert api.hits == 3
    assert [h["x-stainless-retry-count"] for h in api.seen_headers] == ["0", "1", "2"]
    assert elapsed < 0.5, "retry-after-ms should make SDK retries immediate"


def test_anthropic_retries_through_scripted_errors(ant: anthropic.Anthropic, api: FakeLLMAPI) -> None:
    api.script(MESSAGES, [529, 429, 200])
    started = time.monotonic()
    client = ant.with_options(max_retries=2)
    with client.messages.stream(model=CLAUDE, max_tokens=4, messages=_user("retry")) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 4
    assert api.hits == 3
    assert time.monotonic() - started < 0.5


def test_retries_exhausted(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    api.script(CHAT, [429, 429, 429])
    with pytest.raises(openai.RateLimitError):
        oai.with_options(max_retries=1).chat.completions.create(model=GPT, messages=_user("retry"))
    assert api.hits == 2
    assert api.pending_script(CHAT) == [429]


# ------------------------------------------------------------------------------------ timing and liveness


def _open_chat(oai: openai.OpenAI, ant: anthropic.Anthropic) -> Iterator[object]:
    return iter(oai.chat.completions.create(model=GPT, messages=_user("gate"), stream=True))


def _open_responses(oai: openai.OpenAI, ant: anthropic.Anthropic) -> Iterator[object]:
    return iter(oai.responses.create(model=GPT, input="gate", stream=True))


def _open_messages(oai: openai.OpenAI, ant: anthropic.Anthropic) -> Iterator[object]:
    return iter(ant.messages.create(model=CLAUDE, max_tokens=8, messages=_user("gate"), stream=True))


@pytest.mark.parametrize("open_stream", [_open_chat, _open_responses, _open_messages])
def test_gate_holds_stream_after_first_event(
    oai: openai.OpenAI,
    ant: anthropic.Anthropic,
    api: FakeLLMAPI,
    open_stream: Callable[[openai.OpenAI, anthropic.Anthropic], Iterator[object]],
) -> None:
    gate = api.gate = threading.Event()
    events = open_stream(oai, ant)
    first = next(events)
    assert first is not None
    assert api.first_event_sent.wait(2)
    assert api.open_streams == 1

    rest: list[object] = []
    reader = threading.Thread(target=lambda: rest.extend(events))
    reader.start()
    reader.join(0.1)
    assert reader.is_alive(), "the stream went on although the gate was closed"
    assert rest == []

    gate.set()
    reader.join(3)
    assert not reader.is_alive()
    assert len(rest) > DEFAULT_CHUNKS
    assert _wait_until(lambda: api.open_streams == 0)
    assert api.streams_completed == 1
    assert api.streams_aborted == 0


def test_client_leaving_mid_stream_counts_as_aborted(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    api.gate = threading.Event()
    stream = oai.chat.completions.create(model=GPT, messages=_user("leave"), stream=True)
    next(iter(stream))
    assert api.open_streams == 1
    stream.close()
    assert _wait_until(lambda: api.streams_aborted == 1)
    assert api.open_streams == 0
    assert api.streams_completed == 0


@pytest.mark.anyio
async def test_gate_async(url: str, api: FakeLLMAPI) -> None:
    gate = api.gate = threading.Event()
    async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as client:
        stream = await client.messages.create(model=CLAUDE, max_tokens=8, messages=_user("g"), stream=True)
        rest: list[RawMessageStreamEvent] = []

        async def drain() -> None:
            async for event in stream:
                rest.append(event)

        first = await stream.__anext__()
        assert first.type == "message_start"
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await anyio.sleep(0.1)
            assert rest == [], "the stream went on although the gate was closed"
            gate.set()
    assert [e.type for e in rest][-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_latency_and_stream_gap(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    api.latency = 0.15
    started = time.monotonic()
    oai.chat.completions.create(model=GPT, messages=_user("slow"))
    assert time.monotonic() - started >= 0.15

    api.latency = 0.0
    api.stream_gap = 0.02
    started = time.monotonic()
    chunks = list(oai.chat.completions.create(model=GPT, messages=_user("slow"), stream=True, max_tokens=5))
    # 5 content chunks + role + finish + [DONE]: 7 gaps between 8 events.
    assert len(chunks) == 7
    assert time.monotonic() - started >= 7 * 0.02


def test_hold_keeps_a_counted_request_in_flight(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    hold = api.hold = threading.Event()
    results: list[ChatCompletion] = []
    caller = threading.Thread(
        target=lambda: results.append(oai.chat.completions.create(model=GPT, messages=_user("held")))
    )
    caller.start()
    assert _wait_until(lambda: api.hits == 1)
    caller.join(0.05)
    assert caller.is_alive()
    hold.set()
    caller.join(3)
    assert len(results) == 1


def test_reset(oai: openai.OpenAI, api: FakeLLMAPI) -> None:
    list(oai.chat.completions.create(model=GPT, messages=_user("r"), stream=True, max_tokens=1))
    api.script(CHAT, [500])
    assert api.first_event_sent.is_set()
    api.reset()
    assert (api.hits, api.hits_by_path, api.seen_headers, api.seen_bodies) == (0, {}, [], [])
    assert api.pending_script(CHAT) == []
    assert not api.first_event_sent.is_set()
    assert api.streams_completed == api.streams_aborted == api.streams_started == 0


# -------------------------------------------------------------------------------------------- LocalServer


def test_local_server_stops_fast_with_open_keepalive_connection() -> None:
    api = make_fake_api()
    server = LocalServer(api.app).start()
    assert server.url == f"http://127.0.0.1:{server.port}"
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").text == "ok"
        assert client.post("/v1/chat/completions", json={"messages": _user("x")}).status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.TransportError):
            client.get("/health")
    assert not server.running


def test_local_server_stop_cancels_a_stuck_stream() -> None:
    api = make_fake_api()
    api.gate = threading.Event()  # never set
    with (
        LocalServer(api.app, graceful_timeout=0.2) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model=GPT, messages=_user("stuck"), stream=True)
        next(iter(stream))
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
        stream.close()
    assert api.open_streams == 0
    assert api.streams_aborted == 1


def test_local_server_on_stop_ends_stuck_streams_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    api = make_fake_api()
    api.gate = threading.Event()  # never set
    with (
        LocalServer(api.app, on_stop=api.close) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model=GPT, messages=_user("stuck"), stream=True)
        next(iter(stream))
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5
        rest = list(stream)  # the body ended early but cleanly
    assert len(rest) == 0
    assert api.open_streams == 0
    assert api.streams_aborted == 1
    assert api.closed
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.anyio
async def test_local_server_inside_running_event_loop() -> None:
    api = make_fake_api()
    with LocalServer(api.app) as server:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="sk-test", max_retries=0
        ) as client:
            completion = await client.chat.completions.create(model=GPT, messages=_user("loop"))
            stream = await client.chat.completions.create(model=GPT, messages=_user("loop"), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert completion.choices[0].message.content == text
    assert api.hits == 2
