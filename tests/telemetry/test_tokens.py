"""Tokens by type, as OpenAI and Anthropic report them (and bill them)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from httpx_coalesce._usage import Tokens, tokens_in

JSON = b"application/json"
SSE = b"text/event-stream"


def body(usage: dict[str, Any], nest: str | None = None) -> bytes:
    return orjson.dumps({nest: {"usage": usage}} if nest else {"usage": usage})


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # OpenAI chat: cached tokens are part of prompt_tokens.
        (
            {
                "prompt_tokens": 1200,
                "completion_tokens": 30,
                "total_tokens": 1230,
                "prompt_tokens_details": {"cached_tokens": 1024},
            },
            Tokens(input=176, output=30, cached_input=1024),
        ),
        # OpenAI Responses API: the same, under other names.
        (
            {"input_tokens": 50, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 0}},
            Tokens(input=50, output=7),
        ),
        # Anthropic: input_tokens are the uncached ones; cache reads and writes beside.
        (
            {
                "input_tokens": 20,
                "cache_read_input_tokens": 900,
                "cache_creation_input_tokens": 100,
                "output_tokens": 12,
            },
            Tokens(input=120, output=12, cached_input=900),
        ),
        # Embeddings: input only.
        ({"prompt_tokens": 8, "total_tokens": 8}, Tokens(input=8)),
        # A total above its parts (thinking tokens left out of completion_tokens): output.
        ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 40}, Tokens(input=10, output=30)),
    ],
)
def test_usage_is_split_into_input_output_and_cached_input(usage: dict[str, Any], expected: Tokens) -> None:
    tokens = tokens_in(body(usage), JSON)
    assert tokens == expected
    assert sum(tokens.by_type().values()) == tokens.total


def test_an_anthropic_stream_counts_its_cache_reads_and_its_last_output_count() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 300}}},
        {"type": "message_delta", "usage": {"output_tokens": 3}},
        {"type": "message_delta", "usage": {"output_tokens": 9}},
    ]
    stream = b"".join(b"event: x\ndata: " + orjson.dumps(event) + b"\n\n" for event in events)
    assert tokens_in(stream, SSE) == Tokens(input=5, output=9, cached_input=300)


def test_no_usage_is_no_tokens() -> None:
    assert tokens_in(b'{"id": 1}', JSON).by_type() == {}
    assert tokens_in(b"not json", JSON).total == 0
