"""Overlapping identical calls through a real SDK, on conditions rather than on time.

The fake API holds the one upstream call (buffered answers: before answering; streams: after the first
event) until every caller has joined its flight in the transport; only then does it answer. So a test that
sees one upstream call for all its callers saw them overlap, and nothing here sleeps to make them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..support import choreography
from ..support.choreography import OneFlight

T = TypeVar("T")

MakeTransport = Callable[..., CoalescingTransport]

#: Identical callers in each test.
CALLERS = 8
PROMPT = "What does 'amortization' mean? One sentence."


class _Message(Protocol):
    @property
    def content(self) -> object: ...


class _Choice(Protocol):
    @property
    def message(self) -> _Message | None: ...


class Completion(Protocol):
    """A chat completion as the OpenAI-compatible SDKs return it (each with classes of its own)."""

    @property
    def choices(self) -> Sequence[_Choice]: ...


class _Delta(Protocol):
    @property
    def content(self) -> str | None: ...


class _ChunkChoice(Protocol):
    @property
    def delta(self) -> _Delta: ...


class Chunk(Protocol):
    """A streamed chat completion chunk, likewise."""

    @property
    def choices(self) -> Sequence[_ChunkChoice]: ...


def answer_text(completion: Completion) -> str:
    """The text of an OpenAI-compatible chat completion's first choice."""
    message = completion.choices[0].message
    assert message is not None
    content = message.content
    assert isinstance(content, str), content
    return content


async def streamed_text(chunks: AsyncIterable[Chunk]) -> str:
    """The text of an OpenAI-compatible stream of chat completion chunks (a usage chunk has no choices)."""
    return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])


async def overlap(
    api: FakeLLMAPI,
    transport: CoalescingTransport,
    call: Callable[[], Awaitable[T]],
    *,
    stream: bool = False,
    callers: int = CALLERS,
) -> list[T]:
    """Run ``callers`` copies of ``call`` as concurrent tasks, answered once all share one flight."""
    return await choreography.overlap(OneFlight(api, transport, callers, stream), [call] * callers)


def overlap_threads(
    api: FakeLLMAPI,
    transport: CoalescingTransport,
    call: Callable[[], T],
    *,
    stream: bool = False,
    callers: int = CALLERS,
) -> list[T]:
    """The same with a sync client: each copy of ``call`` in a thread of its own."""
    return choreography.overlap_threads(OneFlight(api, transport, callers, stream), [call] * callers)


def assert_one_upstream_call(
    api: FakeLLMAPI, transport: CoalescingTransport, path: str, answers: Sequence[str]
) -> None:
    """One call reached the API and every caller got the whole of its answer."""
    assert api.hits_by_path.get(path) == 1, api.hits_by_path
    assert transport.stats().coalesced == len(answers) - 1, transport.stats()
    assert len(set(answers)) == 1, answers
    # The fake ends every answer with a full stop: a caller that has it has the whole answer.
    assert answers[0].endswith("."), answers[0]
