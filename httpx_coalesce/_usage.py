"""Tokens in an LLM response's ``usage`` block, to count what sharing it saved.

OpenAI (chat completions, responses, embeddings) and Anthropic name their fields
differently, and their streams spread usage over several events; this reads all of
them. It runs only when a response was shared, never on the unshared path.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MAX_PARSED", "tokens_in"]

_INPUT = ("prompt_tokens", "input_tokens")
# LLM answers are small; a larger body is not worth parsing on an event loop (a 1 MB
# answer took 4.6 ms and a 16 MB spike).
MAX_PARSED = 256 * 1024
_OUTPUT = ("completion_tokens", "output_tokens")


def tokens_in(body: bytes, content_type: bytes) -> int:
    """Total tokens the response reports, 0 when it reports none or is not JSON/SSE."""
    if len(body) > MAX_PARSED:
        return 0
    if b"event-stream" in content_type:
        return _stream_tokens(body)
    if b"json" in content_type:
        try:
            return _tally([_usage_of(orjson.loads(body))])
        except orjson.JSONDecodeError:
            return 0
    return 0


def _stream_tokens(body: bytes) -> int:
    usages: list[dict[str, Any]] = []
    for line in body.splitlines():
        if not line.startswith(b"data:") or b"usage" not in line:
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        usages.append(_usage_of(event))
    return _tally(usages)


def _usage_of(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        return {}
    usage = document.get("usage")
    if not isinstance(usage, dict):
        # Responses API streams and Anthropic's message_start nest it one level down.
        for nested in ("response", "message"):
            inner = document.get(nested)
            if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
                usage = inner["usage"]
                break
        else:
            return {}
    return usage


def _tally(usages: list[dict[str, Any]]) -> int:
    # Streams repeat or grow their counts as they go (Anthropic's output_tokens is
    # cumulative), so the largest figure seen for each side is the answer's.
    total = inputs = outputs = 0
    for usage in usages:
        total = max(total, _int(usage.get("total_tokens")))
        inputs = max(inputs, *(_int(usage.get(name)) for name in _INPUT))
        outputs = max(outputs, *(_int(usage.get(name)) for name in _OUTPUT))
    return max(total, inputs + outputs)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
