"""In-process upstreams: transports that answer without a network.

With no socket and no server in the way, what is left of a request's cost is the
client's and the transport's, which is what the overhead figures are about.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import orjson

__all__ = ["InProcessUpstream"]

# An OpenAI-shaped answer of a realistic size (about 400 bytes), built once.
_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-inprocess",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "An answer of a few words."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 250, "completion_tokens": 7, "total_tokens": 257},
    }
)


class InProcessUpstream:
    """An async transport of *library* (httpx or httpx2) that answers every request with
    the same prebuilt JSON, after ``delay`` seconds (0: at once, with no await at all).

    It is a plain class with ``handle_async_request`` (duck-typed as a transport) so one
    implementation serves both libraries; each answer is a new Response of the request's
    library, as a real transport's would be.
    """

    def __init__(self, library: ModuleType, delay: float = 0.0) -> None:
        self.library = library
        self.delay = delay
        self.hits = 0
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_ANSWER)).encode()),
        ]

    async def handle_async_request(self, request: Any) -> Any:
        self.hits += 1
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        # An unread body stream, as every network transport hands over (the client
        # then reads it through its stream layers). ``content=`` would hand over a body
        # read already, as MockTransport does: a step a real upstream never skips.
        stream = self.library.ByteStream(_ANSWER)
        return self.library.Response(200, headers=self._headers, stream=stream, request=request)

    async def aclose(self) -> None:
        return None
