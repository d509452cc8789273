"""What the SDK tests share: client builders, reference answers, and overlapping callers on conditions.

Callers are made to overlap deterministically: the fake API holds each upstream attempt (``api.hold``, or
``api.gate`` after the first event of a stream) until every caller is attached to it in the transport, and
only then lets it answer. Nothing here sleeps to make calls overlap.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any, Protocol, TypeVar

import anthropic
import anyio
import httpx2
import openai
from anthropic.types import Message, MessageParam, TextBlock
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import Response

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until, until_sync

T = TypeVar("T")

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


# -------------------------------------------------------------------------------- making calls overlap


class Choreography(Protocol):
    """When the callers may go on: ``phases`` times, wait until ``ready(phase)``, then ``release(phase)``."""

    @property
    def phases(self) -> int: ...

    def ready(self, phase: int) -> bool: ...

    def release(self, phase: int) -> None: ...

    def release_all(self) -> None: ...


class Conductor:
    """Every upstream attempt waits at the fake API until all callers have joined its flight.

    ``attempts`` is how many upstream attempts the callers go through (more than one when the fake is
    scripted to fail and the SDKs retry); ``flights`` is how many flights run side by side in each
    attempt (one per tenant). An attempt is held before it answers (``api.hold``); the last attempt of a
    ``stream`` is held after its first event instead (``api.gate``), so its head is already out.
    """

    def __init__(
        self,
        api: FakeLLMAPI,
        transport: CoalescingTransport,
        callers: int,
        *,
        attempts: int = 1,
        flights: int = 1,
        stream: bool = False,
    ) -> None:
        self.api = api
        self.transport = transport
        self.callers = callers
        self.flights = flights
        self._attempts = attempts
        self._holds = [threading.Event() for _ in range(attempts - 1 if stream else attempts)]
        self._gate = threading.Event() if stream else None
        api.hold = self._holds[0] if self._holds else None
        api.gate = self._gate

    @property
    def phases(self) -> int:
        return self._attempts

    def ready(self, phase: int) -> bool:
        stats = self.transport.stats()
        if (self.api.hits, stats.in_flight, stats.waiters) != (
            self.flights * (phase + 1),
            self.flights,
            self.callers,
        ):
            return False
        # Held, not merely counted: only then is it safe to swap in the next attempt's hold.
        return phase >= len(self._holds) or self.api.held == self.flights

    def release(self, phase: int) -> None:
        if phase < len(self._holds):
            following = phase + 1
            self.api.hold = self._holds[following] if following < len(self._holds) else None
            self._holds[phase].set()
        elif self._gate is not None:
            self._gate.set()

    def release_all(self) -> None:
        self.api.hold = None
        for event in [*self._holds, self._gate]:
            if event is not None:
                event.set()


class HeldAtServer:
    """For calls that pass the transport by: hold them at the fake API until ``callers`` arrived."""

    def __init__(self, api: FakeLLMAPI, callers: int) -> None:
        self.api = api
        self.callers = callers
        self._hold = api.hold = threading.Event()

    @property
    def phases(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        return self.api.held == self.callers

    def release(self, phase: int) -> None:
        self._hold.set()

    def release_all(self) -> None:
        self.api.hold = None
        self._hold.set()


async def overlap(choreography: Choreography, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run *calls* as concurrent tasks, releasing the fake API as the choreography says; their results."""
    results: dict[int, T] = {}

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    try:
        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(run, index, call)
            for phase in range(choreography.phases):
                await until(partial(choreography.ready, phase))
                choreography.release(phase)
    finally:
        choreography.release_all()
    return [results[index] for index in range(len(calls))]


def overlap_threads(choreography: Choreography, calls: Sequence[Callable[[], T]]) -> list[T]:
    """The same with threads: every call in a thread of its own (sync SDK clients)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]

        def ready_or_failed(phase: int) -> bool:
            return choreography.ready(phase) or any(f.done() and f.exception() for f in futures)

        try:
            for phase in range(choreography.phases):
                until_sync(partial(ready_or_failed, phase))
                for future in futures:
                    if future.done():
                        future.result()  # a caller failed early: raise its error, not a time-out
                choreography.release(phase)
        finally:
            choreography.release_all()
        return [future.result(timeout=10) for future in futures]
