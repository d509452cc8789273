"""Tokens in an LLM response's ``usage`` block, to count what sharing it saved.

OpenAI (chat completions, responses, embeddings) and Anthropic name their fields
differently, and their streams spread usage over several events; this reads all of
them. It runs only when a response was shared, never on the unshared path.

Tokens are split by type, as providers bill them: ``input`` (prompt tokens not read
from the provider's prompt cache, including tokens written to it), ``cached_input``
(read from that cache: OpenAI's ``*_tokens_details.cached_tokens``, Anthropic's
``cache_read_input_tokens``) and ``output``. The types add up to the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["MAX_PARSED", "NO_TOKENS", "Answer", "Tokens", "read_answer", "tokens_in"]

# LLM answers are small; a larger body is not worth parsing on an event loop (a 1 MB
# answer took 4.6 ms and a 16 MB spike).
MAX_PARSED = 256 * 1024


@dataclass(frozen=True, slots=True)
class Tokens:
    """Tokens of one answer, by type (``gen_ai.token.type``)."""

    input: int = 0
    output: int = 0
    cached_input: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cached_input

    def by_type(self) -> dict[str, int]:
        """The non-zero types, by their ``gen_ai.token.type`` name."""
        types = {"input": self.input, "output": self.output, "cached_input": self.cached_input}
        return {name: count for name, count in types.items() if count}

    def times(self, factor: int) -> Tokens:
        return Tokens(self.input * factor, self.output * factor, self.cached_input * factor)


NO_TOKENS = Tokens()


@dataclass(frozen=True, slots=True)
class Answer:
    """What an LLM answer says about itself: its tokens, the model that wrote it, and
    (for a JSON answer) the parsed document, for a fuller reading by the price list."""

    tokens: Tokens = NO_TOKENS
    model: str | None = None
    document: Any = None


_NO_ANSWER = Answer()


def tokens_in(body: bytes, content_type: bytes) -> Tokens:
    """Tokens the response reports, none when it reports none or is not JSON/SSE."""
    return read_answer(body, content_type).tokens


def read_answer(body: bytes, content_type: bytes) -> Answer:
    """The answer in *body*; an empty one when it is too large, or not JSON/SSE."""
    if len(body) > MAX_PARSED:
        return _NO_ANSWER
    if b"event-stream" in content_type:
        return _read_stream(body)
    if b"json" in content_type:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _NO_ANSWER
        return Answer(_tally([_usage_of(document)]), _model_of(document), document)
    return _NO_ANSWER


def _read_stream(body: bytes) -> Answer:
    usages: list[dict[str, Any]] = []
    model: str | None = None
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        # Every OpenAI chunk names the model; Anthropic's and the Responses API's first
        # event does, and only the events with usage are needed after that.
        if b"usage" not in line and (model is not None or b'"model"' not in line):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        if model is None:
            model = _model_of(event)
        usages.append(_usage_of(event))
    return Answer(_tally(usages), model)


def _model_of(document: Any) -> str | None:
    model = _field(document, "model")
    return model if isinstance(model, str) else None


def _usage_of(document: Any) -> dict[str, Any]:
    usage = _field(document, "usage")
    return usage if isinstance(usage, dict) else {}


def _field(document: Any, name: str) -> Any:
    """*document*'s *name*, or the one a level down: Responses API streams and Anthropic's
    message_start nest theirs in ``response`` or ``message``."""
    if not isinstance(document, dict):
        return None
    value = document.get(name)
    if value is None:
        for nested in ("response", "message"):
            inner = document.get(nested)
            if isinstance(inner, dict) and inner.get(name) is not None:
                return inner[name]
    return value


def _tally(usages: list[dict[str, Any]]) -> Tokens:
    # Streams repeat or grow their counts as they go (Anthropic's output_tokens is
    # cumulative), so the largest figure seen for each field is the answer's.
    total = prompt = details_cached = cache_read = cache_written = outputs = 0
    for usage in usages:
        total = max(total, _int(usage.get("total_tokens")))
        prompt = max(prompt, _int(usage.get("prompt_tokens")), _int(usage.get("input_tokens")))
        outputs = max(outputs, _int(usage.get("completion_tokens")), _int(usage.get("output_tokens")))
        # OpenAI counts cached tokens inside its prompt figure, in a details block...
        for details in (usage.get("prompt_tokens_details"), usage.get("input_tokens_details")):
            if isinstance(details, dict):
                details_cached = max(details_cached, _int(details.get("cached_tokens")))
        # ... Anthropic beside it: its input_tokens are the uncached ones only.
        cache_read = max(cache_read, _int(usage.get("cache_read_input_tokens")))
        cache_written = max(cache_written, _int(usage.get("cache_creation_input_tokens")))
    details_cached = min(details_cached, prompt)
    tokens = Tokens(prompt - details_cached + cache_written, outputs, details_cached + cache_read)
    if total > tokens.total:
        # A total above its parts holds tokens reported nowhere else, such as the thinking
        # tokens some OpenAI-compatible APIs leave out of completion_tokens: billed as output.
        tokens = Tokens(tokens.input, outputs + total - tokens.total, tokens.cached_input)
    return tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
