"""What the SDK tests share: client builders and reference answers (tests/support/choreography.py
makes their callers overlap)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import anthropic
import httpx2
import openai
from anthropic.types import Message, MessageParam, TextBlock
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import Response

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
#: Concurrent identical callers in most tests (the brief asks for 10 to 50).
N = 20

MakeTransport = Callable[..., CoalescingTransport]


def chat_messages(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def claude_messages(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------ clients


def openai_client(
    url: str, transport: CoalescingTransport, lib: ModuleType = httpx2, **options: Any
) -> openai.OpenAI:
    """A sync OpenAI client whose http client (httpx or httpx2) sends through *transport*."""
    options.setdefault("api_key", "sk-test")
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{url}/v1", http_client=lib.Client(transport=transport), **options)


def async_openai_client(
    url: str, transport: CoalescingTransport, lib: ModuleType = httpx2, **options: Any
) -> openai.AsyncOpenAI:
    options.setdefault("api_key", "sk-test")
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1", http_client=lib.AsyncClient(transport=transport), **options
    )


def anthropic_client(url: str, transport: CoalescingTransport, **options: Any) -> anthropic.Anthropic:
    """A sync Anthropic client; the SDK only takes httpx2 clients."""
    options.setdefault("api_key", "sk-ant-test")
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=url, http_client=httpx2.Client(transport=transport), **options)


def async_anthropic_client(
    url: str, transport: CoalescingTransport, **options: Any
) -> anthropic.AsyncAnthropic:
    options.setdefault("api_key", "sk-ant-test")
    options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(
        base_url=url, http_client=httpx2.AsyncClient(transport=transport), **options
    )


# ----------------------------------------------------------------------------------- what came back


def completion_text(completion: ChatCompletion) -> str:
    content = completion.choices[0].message.content
    assert content is not None
    return content


def chunks_text(chunks: Sequence[ChatCompletionChunk]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def message_text(message: Message) -> str:
    block = message.content[0]
    assert isinstance(block, TextBlock)
    return block.text


def dumps(events: Sequence[Any]) -> list[Any]:
    """Events (pydantic models) as plain data, to compare one caller's sequence with another's."""
    return [event.model_dump(mode="json", warnings=False) for event in events]


class Direct:
    """Reference answers: the same calls made straight to the fake API, with no transport at all.

    The fake's answers depend only on the request, so these are what every coalesced caller must get.
    Each call resets the fake's counters afterwards, so a test still starts counting from zero.
    """

    def __init__(self, api: FakeLLMAPI, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
        self._api = api
        self.openai = oai
        self.anthropic = ant

    def chat(self, text: str, **options: Any) -> str:
        completion: ChatCompletion = self.openai.chat.completions.create(
            model=GPT, messages=chat_messages(text), **options
        )
        self._api.reset()
        return completion_text(completion)

    def response(self, text: str, **options: Any) -> str:
        response: Response = self.openai.responses.create(model=GPT, input=text, **options)
        self._api.reset()
        return response.output_text

    def message(self, text: str, max_tokens: int = 8, **options: Any) -> str:
        message: Message = self.anthropic.messages.create(
            model=CLAUDE, max_tokens=max_tokens, messages=claude_messages(text), **options
        )
        self._api.reset()
        return message_text(message)
