"""A fake LLM API speaking the OpenAI and Anthropic wire formats, as a Starlette app.

It exists so the demo and the tests can run the real ``openai`` and ``anthropic`` SDKs against something that
answers like the real services (same JSON shapes, same SSE event sequences, same error bodies and retry
headers) while counting every upstream hit, so that coalescing can be observed from the server's side.

Answers are deterministic: the text is derived from a hash of the request body (ignoring the ``stream`` and
``stream_options`` fields), so identical requests get identical content whether streamed or not, and
different requests get different content. Ids (``chatcmpl-...``, ``msg_...``) embed the hit number instead,
so two callers that received the same id were served by the same upstream call.

Structured output: when a request asks for a JSON-schema format (chat ``response_format``, responses
``text.format``, messages ``output_config.format``), the answer's text is a JSON document that fits the
schema (values derived from the same hash), streamed in as many pieces as a plain answer has words, so the
SDKs' ``parse`` helpers work.

Like the real services it can limit each API key to so many requests per minute (answering 429 with
``retry-after`` past it, see :class:`RateLimit`) and bills every answer's tokens to the key that asked, at
the prices it is given (the demo gives it genai-prices' list price of a real model; by default a table of
its own, :data:`DEMO_PRICES`, made up for the tests), see :meth:`FakeLLMAPI.bill`.

Every API response carries ``x-fake-hit: N`` (the hit that produced it) and ``x-request-id``/``request-id``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses``, ``POST /v1/embeddings``,
``POST /v1/messages``, ``GET /v1/models`` (Anthropic shape when the request has ``anthropic-version``), and
``GET /health`` (plain ``ok``; not counted as a hit). For the SDK recipes' tests, three more dialects of chat:
``POST /openai/v1/chat/completions`` (Groq's path for the OpenAI shape), ``POST /v2/chat`` (Cohere's v2 chat,
buffered or SSE) and ``POST /v1/models/{model}:generateContent`` / ``:streamGenerateContent?alt=sse``
(Gemini's, under ``/v1beta`` too). Their error bodies are in the OpenAI shape.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

__all__ = ["DEFAULT_CHUNKS", "DEMO_PRICES", "Bill", "FakeLLMAPI", "Price", "RateLimit", "make_fake_api"]

JSONObject = dict[str, Any]
Flavour = Literal["openai", "anthropic"]

DEFAULT_CHUNKS: Final = 8
"""Content chunks (= output tokens) in an answer when the request sets no token limit."""

# Polling, rather than parking a worker thread on Event.wait(), keeps gate/hold waits cancellable when the
# client disconnects or the server shuts down. The interval starts small so a release is seen at once in
# tests, and backs off so hundreds of waiters do not keep the server's loop busy.
_POLL_FIRST_SECONDS: Final = 0.001
_POLL_MAX_SECONDS: Final = 0.01

_VOCABULARY: Final = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "iris",
    "jade",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "onyx",
    "pebble",
    "quartz",
    "river",
    "saffron",
    "tundra",
    "umber",
    "violet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "aurora",
    "breeze",
    "canyon",
    "drift",
    "estuary",
    "falcon",
    "glacier",
    "horizon",
    "island",
    "jungle",
]

# Real embedding models top out at 3072 dimensions; the bound keeps a stray request from allocating wildly.
_MAX_EMBEDDING_DIMS: Final = 4096

_OPENAI_MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
_ANTHROPIC_MODELS: Final = (
    # Names the installed SDK does not flag as deprecated (it warns on every call with those).
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-opus-4-7", "Claude Opus 4.7"),
)

# status -> (error type, code, message), in the shape the real OpenAI API uses.
_OPENAI_ERRORS: Final[Mapping[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by the fake API)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided (injected by the fake API).",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden (injected)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (injected by the fake API)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the fake API)."),
    500: ("server_error", None, "The server had an error processing your request (injected)."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded (injected)."),
    529: ("server_error", "overloaded", "The server is overloaded (injected by the fake API)."),
}

# status -> (error type, message), in the shape the real Anthropic API uses.
_ANTHROPIC_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request (injected by the fake API)."),
    401: ("authentication_error", "invalid x-api-key (injected by the fake API)."),
    402: ("billing_error", "Billing problem (injected by the fake API)."),
    403: ("permission_error", "Permission denied (injected by the fake API)."),
    404: ("not_found_error", "Not found (injected by the fake API)."),
    413: ("request_too_large", "Request too large (injected by the fake API)."),
    429: ("rate_limit_error", "Rate limit exceeded (injected by the fake API)."),
    500: ("api_error", "Internal server error (injected by the fake API)."),
    504: ("timeout_error", "Gateway timeout (injected by the fake API)."),
    529: ("overloaded_error", "Overloaded (injected by the fake API)."),
}


@dataclass(frozen=True)
class Price:
    """What a model costs, in dollars per million tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1_000_000


DEMO_PRICES: Final[Mapping[str, Price]] = {
    # The demo's own made-up price list, of the order real APIs charge: it belongs to this fake API, not to
    # any provider, and the library never reads it. A model not listed is billed at "*".
    "gpt-demo": Price(input_per_million=2.50, output_per_million=10.00),
    "*": Price(input_per_million=1.00, output_per_million=4.00),
}


@dataclass(frozen=True)
class RateLimit:
    """A per-key limit in requests per minute, enforced in slices of the minute as the real APIs do.

    Real APIs do not let a key spend its whole minute in one second: a limit of 1,200 requests per minute is
    enforced as 20 in any one-second slice. A request past the slice's share gets a 429 whose ``retry-after``
    says when the next slice starts. ``slice_seconds`` shorter than a second keeps tests fast.
    """

    requests_per_minute: int
    slice_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.requests_per_minute < 1:
            raise ValueError(f"requests_per_minute must be at least 1, got {self.requests_per_minute}")
        if not (math.isfinite(self.slice_seconds) and 0 < self.slice_seconds <= 60):
            raise ValueError(f"slice_seconds must be in (0, 60], got {self.slice_seconds}")

    @property
    def per_slice(self) -> int:
        return max(1, math.floor(self.requests_per_minute * self.slice_seconds / 60))


@dataclass(frozen=True)
class Bill:
    """What one key was charged: answers given, tokens billed and their cost at the API's prices."""

    answers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Bill) -> Bill:
        return Bill(
            self.answers + other.answers,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost + other.cost,
        )


def _account(headers: Mapping[str, str]) -> str:
    """The key a request is billed to and rate-limited by, read from the headers the real APIs read."""
    for name in ("authorization", "x-api-key", "x-goog-api-key", "api-key"):
        value = headers.get(name)
        if value:
            return value.removeprefix("Bearer ").removeprefix("bearer ")
    return ""


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # A bytes body makes Starlette set Content-Length, so non-stream answers are never chunked.
    return Response(_dumps(obj), status_code=status, headers=headers, media_type="application/json")


def _sse_data(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _sse_event(kind: str, payload: JSONObject) -> bytes:
    """A named SSE event whose data leads with the name as its ``type``, as every named-event dialect does."""
    return b"event: " + kind.encode() + b"\ndata: " + _dumps({"type": kind, **payload}) + b"\n\n"


async def _wait_threading_event(event: threading.Event, closing: threading.Event) -> None:
    """Wait until ``event`` (or ``closing``) is set."""
    interval = _POLL_FIRST_SECONDS
    while not (event.is_set() or closing.is_set()):
        await anyio.sleep(interval)
        interval = min(interval * 2, _POLL_MAX_SECONDS)


def _text_of(content: Any) -> str:
    """Concatenated text of a message ``content`` in any of the APIs' shapes (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif "content" in part:
                    parts.append(_text_of(part["content"]))
        return " ".join(parts)
    return ""


def _count_tokens(text: str) -> int:
    # The usual "about four characters per token" rule of thumb; only needs to be plausible and deterministic.
    return max(1, (len(text) + 3) // 4)


def _prompt_tokens(texts: Iterable[str]) -> int:
    # A few tokens of per-message framing, as the real APIs bill.
    return sum(_count_tokens(text) + 3 for text in texts) + 3


def _words(seed: bytes, n: int) -> list[str]:
    """``n`` word tokens: the first without a leading space, the rest with one, the last ending the sentence.

    SHAKE output is prefix-stable, so a shorter answer to the same request is a prefix of a longer one.
    """
    if n <= 0:
        return []
    stream = hashlib.shake_256(seed).digest(n)
    words = [_VOCABULARY[b % len(_VOCABULARY)] for b in stream]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return [words[0]] + [" " + w for w in words[1:]]


# Deeper schemas are answered with null below this depth, so a recursive $ref cannot loop.
_MAX_SCHEMA_DEPTH: Final = 8


def _json_schema_of(body: JSONObject) -> JSONObject | None:
    """The JSON schema a request asks its answer to follow, in any of the three APIs' shapes, or None."""
    candidates: list[Any] = []
    response_format = body.get("response_format")  # chat completions
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        json_schema = response_format.get("json_schema")
        candidates.append(json_schema.get("schema") if isinstance(json_schema, dict) else None)
    for holder in (body.get("text"), body.get("output_config")):  # responses, messages
        output_format = holder.get("format") if isinstance(holder, dict) else None
        if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
            candidates.append(output_format.get("schema"))
    for schema in candidates:
        if isinstance(schema, dict):
            return schema
    return None


def _structured_pieces(seed: bytes, schema: JSONObject, n: int) -> list[str]:
    """A JSON document that fits ``schema``, derived from ``seed``, cut into at most ``n`` pieces."""
    pool = hashlib.shake_256(b"json\0" + seed).digest(256)
    draws = iter(range(1 << 30))
    defs = schema.get("$defs") or schema.get("definitions") or {}

    def draw() -> int:
        return pool[next(draws) % len(pool)]

    def instance(node: Any, depth: int) -> Any:
        if not isinstance(node, dict) or depth > _MAX_SCHEMA_DEPTH:
            return None
        ref = node.get("$ref")
        if isinstance(ref, str):
            return instance(defs.get(ref.rsplit("/", 1)[-1]) if isinstance(defs, dict) else None, depth + 1)
        if "const" in node:
            return node["const"]
        enum = node.get("enum")
        if isinstance(enum, list) and enum:
            return enum[draw() % len(enum)]
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = node.get(combinator)
            if isinstance(options, list) and options:
                chosen = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return instance((chosen or options)[0], depth + 1)
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in node):
            properties = node.get("properties")
            if not isinstance(properties, dict):
                return {}
            return {name: instance(sub, depth + 1) for name, sub in properties.items()}
        if kind == "array":
            least, most = node.get("minItems"), node.get("maxItems")
            count = min(max(least, 2), 16) if isinstance(least, int) and not isinstance(least, bool) else 2
            if isinstance(most, int) and not isinstance(most, bool):
                count = max(min(count, most), 0)
            return [instance(node.get("items"), depth + 1) for _ in range(count)]
        if kind == "integer":
            return draw()
        if kind == "number":
            return draw() / 4
        if kind == "boolean":
            return draw() % 2 == 1
        if kind == "null":
            return None
        return _VOCABULARY[draw() % len(_VOCABULARY)]

    text = _dumps(instance(schema, 0)).decode()
    count = max(1, min(n, len(text)))
    return [text[i * len(text) // count : (i + 1) * len(text) // count] for i in range(count)]


def _answer_pieces(call: _Call, n: int) -> list[str]:
    """The answer's text in ``n`` pieces: words, or a JSON document when the request asks for a schema."""
    schema = _json_schema_of(call.body)
    return _words(call.seed, n) if schema is None else _structured_pieces(call.seed, schema, n)


def _embedding(model: str, item: Any, dims: int) -> list[float]:
    """A unit vector derived from the input, with values exactly representable as float32.

    float32-exactness makes the ``base64`` encoding the SDKs ask for by default decode to the very same
    numbers as the ``float`` encoding.
    """
    raw = hashlib.shake_256(model.encode() + b"\0" + _dumps(item)).digest(4 * dims)
    values = [(v / 0x7FFFFFFF) - 1.0 for v in struct.unpack(f"<{dims}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dims}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dims}f", packed))


@dataclass(frozen=True)
class _Call:
    """What a handler needs to know about one accepted request."""

    hit: int
    body: JSONObject
    seed: bytes
    account: str

    @property
    def suffix(self) -> str:
        return f"{self.hit:06d}{self.seed.hex()[:18]}"


class _TrackedStream(StreamingResponse):
    """An SSE response that applies the API's gate and stream gap and reports how the stream ended."""

    def __init__(self, api: FakeLLMAPI, events: Sequence[bytes], headers: Mapping[str, str]) -> None:
        self._api = api
        self._events = events
        self._delivered_all = False
        self._generator = self._pump()
        super().__init__(self._generator, media_type="text/event-stream", headers=headers)

    async def _pump(self) -> AsyncGenerator[bytes, None]:
        api = self._api
        for index, event in enumerate(self._events):
            if index == 1:
                # Resuming after the first yield means Starlette's send() of the first event has returned.
                api.first_event_sent.set()
                gate = api.gate
                if gate is not None:
                    await _wait_threading_event(gate, api._closing)
            if index > 0 and api.stream_gap > 0:
                await anyio.sleep(api.stream_gap)
            if api._closing.is_set():
                # Ending the body, rather than being cancelled by uvicorn's shutdown, lets the server stop
                # at once and without "Exception in ASGI application" noise.
                return
            yield event
        if len(self._events) == 1:
            api.first_event_sent.set()
        self._delivered_all = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = False

        async def tracking_send(message: Message) -> None:
            nonlocal ended
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True

        self._api._stream_opened()
        try:
            # Starlette races the body against http.disconnect and cancels the body when the client leaves;
            # that cancellation lands in the generator's sleep/gate wait, or here if it was mid-send.
            await super().__call__(scope, receive, tracking_send)
        finally:
            with anyio.CancelScope(shield=True):
                # A generator cancelled between items is still suspended at its yield; close it now rather
                # than at garbage collection so its cleanup runs before the counters change.
                await self._generator.aclose()
            self._api._stream_closed(ended and self._delivered_all)


class _Count:
    """A count the server's tasks and threads keep on a ``FakeLLMAPI``, in ``_<name>``: read
    under its lock, as a read-only property would."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._field = f"_{name}"

    def __get__(self, api: FakeLLMAPI, owner: type | None = None) -> int:
        with api._lock:
            count: int = getattr(api, self._field)
        return count


class FakeLLMAPI:
    """State and ASGI app of the fake API. All counters are safe to read from any thread.

    Runtime knobs (plain attributes, settable while the server runs):

    ``latency``
        seconds to sleep before answering any counted request (errors included).
    ``stream_gap``
        seconds between consecutive SSE events.
    ``gate``
        when a ``threading.Event``, every stream sends its first event, then waits until the event is set
        (or :meth:`close` is called).
    ``hold``
        when a ``threading.Event``, every counted request (streaming or not) waits after being counted,
        before answering, until the event is set: a deterministic way to keep an upstream call in flight.
        ``held`` counts the requests waiting on it. The event is read once per request, so replacing
        ``hold`` with a new closed event before setting the old one holds the next requests again.
    ``retry_after_ms``
        value of ``retry-after-ms`` on retryable errors; see :meth:`script`.
    ``rate_limit``
        a :class:`RateLimit` applied to each key (the request's API key) on its own, or None for no limit.
        Requests it turns away are answered at once (no ``latency``) and counted in ``rate_limited``.
    ``prices``
        dollars per million tokens by model (``"*"`` for any other model); every answer's usage is billed
        to its key at these prices, see :meth:`bill`.
    ``embedding_dims``
        default embedding size when the request has no ``dimensions``.
    ``max_chunks``
        upper bound on content chunks per answer, whatever the request's token limit says.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        stream_gap: float = 0.0,
        headers_kept: int = 100,
        embedding_dims: int = 16,
        max_chunks: int = 256,
        retry_after_ms: int = 1,
        rate_limit: RateLimit | None = None,
        prices: Mapping[str, Price] = DEMO_PRICES,
    ) -> None:
        self.latency = latency
        self.stream_gap = stream_gap
        self.gate: threading.Event | None = None
        self.hold: threading.Event | None = None
        self.retry_after_ms = retry_after_ms
        self.rate_limit = rate_limit
        self.prices = prices
        self.embedding_dims = embedding_dims
        self.max_chunks = max_chunks
        self.first_event_sent = threading.Event()
        self._closing = threading.Event()

        self._lock = threading.Lock()
        self._hits = 0
        self._hits_by_path: dict[str, int] = {}
        self._scripts: dict[str, deque[int]] = {}
        self._seen_headers: deque[dict[str, str]] = deque(maxlen=headers_kept)
        self._seen_bodies: deque[bytes] = deque(maxlen=headers_kept)
        self._held = 0
        # key -> (when its current slice of the minute ends, requests admitted in it)
        self._slices: dict[str, tuple[float, int]] = {}
        self._rate_limited = 0
        self._bills: dict[str, Bill] = {}
        self._open_streams = 0
        self._streams_started = 0
        self._streams_completed = 0
        self._streams_aborted = 0

        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/openai/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v2/chat", self._cohere_chat, methods=["POST"]),
                Route("/v1/models/{target}", self._gemini, methods=["POST"]),
                Route("/v1beta/models/{target}", self._gemini, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    # ----------------------------------------------------------------------------------------- inspection

    hits = _Count(
        "Requests that reached an API endpoint (``/health`` excluded), including error-injected ones."
    )

    @property
    def hits_by_path(self) -> dict[str, int]:
        """A snapshot copy, keyed by URL path such as ``/v1/chat/completions``."""
        with self._lock:
            return dict(self._hits_by_path)

    @property
    def seen_headers(self) -> list[dict[str, str]]:
        """Headers of the most recent counted requests, oldest first, names lower-cased (a snapshot copy)."""
        with self._lock:
            return [dict(h) for h in self._seen_headers]

    @property
    def seen_bodies(self) -> list[bytes]:
        """Raw bodies of the most recent counted requests, oldest first, parallel to ``seen_headers``."""
        with self._lock:
            return list(self._seen_bodies)

    rate_limited = _Count("Requests answered 429 by the rate limit (injected 429s not included).")

    def bill(self, api_key: str | None = None) -> Bill:
        """What ``api_key`` was charged, or every key together when None."""
        with self._lock:
            if api_key is not None:
                return self._bills.get(api_key, Bill())
            return sum(self._bills.values(), Bill())

    held = _Count("Requests waiting on ``hold`` right now (counted, not yet answered).")

    open_streams = _Count("Streams begun and not yet ended.")

    streams_started = _Count("Streams begun.")

    streams_completed = _Count("Streams that sent their last event.")

    streams_aborted = _Count(
        "Streams that ended before their last event was sent (client went away, or server shutdown)."
    )

    # -------------------------------------------------------------------------------------------- control

    def script(self, path: str, statuses: Iterable[int]) -> None:
        """Queue statuses for the next hits of ``path``; each hit pops one, 200 meaning a normal answer.

        Queued statuses are appended to any still pending. Error answers use the API's error body shape
        (Anthropic's for ``/v1/messages``, OpenAI's elsewhere). Retryable errors (429, 408, 409, 5xx) carry
        ``retry-after: 0`` and ``retry-after-ms: <retry_after_ms>``: both SDKs treat a zero delay as "no
        advice" and fall back to ~0.5 s exponential backoff, so the default of 1 ms is what makes their
        retries immediate.
        """
        queued = [int(s) for s in statuses]
        for status in queued:
            if status != 200 and not 400 <= status <= 599:
                raise ValueError(f"scripted status must be 200 or 4xx/5xx, got {status}")
        key = self._normalise_path(path)
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(queued)

    def pending_script(self, path: str) -> list[int]:
        with self._lock:
            return list(self._scripts.get(self._normalise_path(path), ()))

    def close(self) -> None:
        """Release every request waiting on ``gate`` or ``hold`` and end open streams early.

        Streams cut short this way count as aborted; until :meth:`reset`, streams started afterwards end
        without sending any event, and ``gate``/``hold`` are ignored. Pass it to the server so that stopping
        never waits on a closed gate::

            with LocalServer(api.app, on_stop=api.close) as server: ...
        """
        self._closing.set()

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def reset(self) -> None:
        """Zero counters, forget scripts and seen requests, clear ``first_event_sent``, undo :meth:`close`.

        Configuration (``latency``, ``stream_gap``, ``gate``, ``hold``, ...) is left as it is. Streams still
        open keep counting in ``open_streams`` until they end.
        """
        with self._lock:
            self._hits = 0
            self._hits_by_path.clear()
            self._scripts.clear()
            self._seen_headers.clear()
            self._seen_bodies.clear()
            self._slices.clear()
            self._rate_limited = 0
            self._bills.clear()
            self._streams_started = 0
            self._streams_completed = 0
            self._streams_aborted = 0
        self.first_event_sent.clear()
        self._closing.clear()

    @staticmethod
    def _normalise_path(path: str) -> str:
        path = "/" + path.strip().lstrip("/")
        return path.rstrip("/") or "/"

    # ------------------------------------------------------------------------------------ stream tracking

    def _stream_opened(self) -> None:
        with self._lock:
            self._open_streams += 1
            self._streams_started += 1

    def _stream_closed(self, completed: bool) -> None:
        with self._lock:
            self._open_streams -= 1
            if completed:
                self._streams_completed += 1
            else:
                self._streams_aborted += 1

    def _stream(self, call: _Call, events: Sequence[bytes]) -> Response:
        headers = {**self._answer_headers(call.hit), "cache-control": "no-cache", "x-accel-buffering": "no"}
        return _TrackedStream(self, events, headers)

    # --------------------------------------------------------------------------------- request plumbing

    @staticmethod
    def _answer_headers(hit: int) -> dict[str, str]:
        request_id = f"req_fake{hit:08d}"
        return {"x-fake-hit": str(hit), "x-request-id": request_id, "request-id": request_id}

    def _count(self, request: Request, body: bytes) -> tuple[int, int | None, dict[str, str]]:
        """Record the hit; return (hit number, scripted status or None, lower-cased headers)."""
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = request.url.path
        with self._lock:
            self._hits += 1
            hit = self._hits
            self._hits_by_path[path] = self._hits_by_path.get(path, 0) + 1
            self._seen_headers.append(headers)
            self._seen_bodies.append(body)
            status: int | None = None
            # A header-forced status wins and leaves the script for the next hit.
            if "x-fake-status" not in headers:
                queue = self._scripts.get(path)
                if queue:
                    status = queue.popleft()
        return hit, status, headers

    async def _accept(
        self, request: Request, flavour: Flavour, seed_path: str | None = None
    ) -> _Call | Response:
        """Count, delay, apply injected errors and parse the body: a ready call or an error response."""
        raw = await request.body()
        hit, status, headers = self._count(request, raw)

        forced = headers.get("x-fake-status")
        if forced is not None:
            try:
                status = int(forced)
            except ValueError:
                return self._error(400, flavour, hit, f"x-fake-status must be an integer, got {forced!r}")

        account = _account(headers)
        if status is None:
            wait = self._admit(account)
            if wait is not None:
                return self._too_many(flavour, hit, wait)

        if self.latency > 0:
            await anyio.sleep(self.latency)
        hold = self.hold
        if hold is not None:
            with self._lock:
                self._held += 1
            try:
                await _wait_threading_event(hold, self._closing)
            finally:
                with self._lock:
                    self._held -= 1

        if status is not None and status != 200:
            return self._error(status, flavour, hit)

        body: Any = {}
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return self._error(400, flavour, hit, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return self._error(400, flavour, hit, "The request body must be a JSON object.")

        # stream/stream_options change the framing, not the answer, so they stay out of the seed.
        seed_source = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        seed = hashlib.sha256(
            (seed_path or request.url.path).encode()
            + b"\0"
            + orjson.dumps(seed_source, option=orjson.OPT_SORT_KEYS)
        ).digest()
        return _Call(hit=hit, body=body, seed=seed, account=account)

    def _admit(self, account: str) -> float | None:
        """Count a request against its key's slice: None when admitted, else seconds until the next slice."""
        limit = self.rate_limit
        if limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            ends, used = self._slices.get(account, (0.0, 0))
            if now >= ends:
                ends, used = now + limit.slice_seconds, 0
            if used < limit.per_slice:
                self._slices[account] = (ends, used + 1)
                return None
            self._rate_limited += 1
            return ends - now

    def _too_many(self, flavour: Flavour, hit: int, wait: float) -> Response:
        limit = self.rate_limit
        assert limit is not None
        message = (
            f"Rate limit reached for requests: limit {limit.requests_per_minute} per minute "
            f"({limit.per_slice} per {limit.slice_seconds:g} s). Please try again in {wait * 1000:.0f} ms."
        )
        response = self._error(429, flavour, hit, message)
        # Both headers, as the real APIs send them: the SDKs read retry-after-ms first, and a zero there
        # would make them fall back to their own backoff.
        response.headers["retry-after"] = str(max(1, math.ceil(wait)))
        response.headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        response.headers["x-ratelimit-limit-requests"] = str(limit.requests_per_minute)
        response.headers["x-ratelimit-remaining-requests"] = "0"
        response.headers["x-ratelimit-reset-requests"] = f"{wait:.3f}s"
        return response

    def _bill(self, call: _Call, model: str, input_tokens: int, output_tokens: int) -> None:
        price = self.prices.get(model) or self.prices.get("*")
        cost = price.cost(input_tokens, output_tokens) if price is not None else 0.0
        with self._lock:
            answer = Bill(answers=1, input_tokens=input_tokens, output_tokens=output_tokens, cost=cost)
            self._bills[call.account] = self._bills.get(call.account, Bill()) + answer

    def _error(self, status: int, flavour: Flavour, hit: int, message: str | None = None) -> Response:
        headers = self._answer_headers(hit)
        if status in (408, 409, 429) or status >= 500:
            headers["retry-after"] = "0"
            headers["retry-after-ms"] = str(self.retry_after_ms)
        if flavour == "anthropic":
            kind, default_message = _ANTHROPIC_ERRORS.get(
                status,
                ("api_error" if status >= 500 else "invalid_request_error", f"Error {status} (injected)."),
            )
            body: JSONObject = {
                "type": "error",
                "error": {"type": kind, "message": message or default_message},
                "request_id": headers["request-id"],
            }
        else:
            kind, code, default_message = _OPENAI_ERRORS.get(
                status,
                (
                    "server_error" if status >= 500 else "invalid_request_error",
                    None,
                    f"Error {status} (injected).",
                ),
            )
            body = {
                "error": {"message": message or default_message, "type": kind, "param": None, "code": code}
            }
        return _json_response(body, status=status, headers=headers)

    def _n_chunks(self, body: JSONObject, *limit_fields: str) -> int:
        for field in limit_fields:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return min(value, self.max_chunks)
        return min(DEFAULT_CHUNKS, self.max_chunks)

    # -------------------------------------------------------------------------------------------- handlers

    async def _health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def _models(self, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        call = await self._accept(request, "anthropic" if anthropic else "openai")
        if isinstance(call, Response):
            return call
        headers = self._answer_headers(call.hit)
        if anthropic:
            data = [
                {
                    "type": "model",
                    "id": model_id,
                    "display_name": name,
                    "created_at": "2025-09-29T00:00:00Z",
                    "lifecycle": "active",
                }
                for model_id, name in _ANTHROPIC_MODELS
            ]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
            return _json_response(page, headers=headers)
        models = [
            {"id": model_id, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for model_id in _OPENAI_MODELS
        ]
        return _json_response({"object": "list", "data": models}, headers=headers)

    async def _chat_completions(self, request: Request) -> Response:
        call = await self._accept(request, "openai")
        if isinstance(call, Response):
            return call
        body = call.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "openai", call.hit, "'messages' must be a non-empty array.")
        model = str(body.get("model") or "gpt-4o-mini")
        words = _answer_pieces(call, self._n_chunks(body, "max_completion_tokens", "max_tokens"))
        prompt_tokens = _prompt_tokens(
            _text_of(m.get("content")) if isinstance(m, dict) else "" for m in messages
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        self._bill(call, model, prompt_tokens, len(words))
        completion_id = f"chatcmpl-fake{call.suffix}"
        created = int(time.time())
        fingerprint = "fp_fake0001"

        if body.get("stream") is not True:
            completion = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(words),
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": fingerprint,
            }
            return _json_response(completion, headers=self._answer_headers(call.hit))

        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        head: JSONObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fingerprint,
        }

        def chunk(delta: JSONObject, finish_reason: str | None) -> bytes:
            obj: JSONObject = {
                **head,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                # The real API sends "usage": null on every chunk but the last when usage was asked for.
                obj["usage"] = None
            return _sse_data(obj)

        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [chunk({"content": word}, None) for word in words]
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append(_sse_data({**head, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return self._stream(call, events)

    async def _responses(self, request: Request) -> Response:
        call = await self._accept(request, "openai")
        if isinstance(call, Response):
            return call
        body = call.body
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            input_texts = [raw_input]
        elif isinstance(raw_input, list):
            input_texts = [
                _text_of(item.get("content")) if isinstance(item, dict) else _text_of(item)
                for item in raw_input
            ]
        else:
            return self._error(400, "openai", call.hit, "'input' must be a string or an array.")
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            input_texts.append(instructions)

        model = str(body.get("model") or "gpt-4o-mini")
        words = _answer_pieces(call, self._n_chunks(body, "max_output_tokens"))
        text = "".join(words)
        input_tokens = _prompt_tokens(input_texts)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(words),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(words),
        }
        self._bill(call, model, input_tokens, len(words))
        response_id = f"resp_fake{call.suffix}"
        message_id = f"msg_fake{call.suffix}"
        created = int(time.time())

        def output_text(value: str) -> JSONObject:
            return {"type": "output_text", "text": value, "annotations": [], "logprobs": []}

        def message(status: str, content: list[JSONObject]) -> JSONObject:
            return {
                "id": message_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }

        def response(status: str, output: list[JSONObject], final_usage: JSONObject | None) -> JSONObject:
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "completed_at": int(time.time()) if status == "completed" else None,
                "error": None,
                "incomplete_details": None,
                "instructions": instructions if isinstance(instructions, str) else None,
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": bool(body.get("store", True)),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": final_usage,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        done_message = message("completed", [output_text(text)])
        if body.get("stream") is not True:
            return _json_response(
                response("completed", [done_message], usage), headers=self._answer_headers(call.hit)
            )

        sequence = iter(range(1 << 30))

        def event(kind: str, payload: JSONObject) -> bytes:
            return _sse_event(kind, {"sequence_number": next(sequence), **payload})

        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        events = [
            event("response.created", {"response": response("in_progress", [], None)}),
            event("response.in_progress", {"response": response("in_progress", [], None)}),
            event("response.output_item.added", {"output_index": 0, "item": message("in_progress", [])}),
            event("response.content_part.added", {**where, "part": output_text("")}),
        ]
        events += [
            event("response.output_text.delta", {**where, "delta": word, "logprobs": []}) for word in words
        ]
        events += [
            event("response.output_text.done", {**where, "text": text, "logprobs": []}),
            event("response.content_part.done", {**where, "part": output_text(text)}),
            event("response.output_item.done", {"output_index": 0, "item": done_message}),
            event("response.completed", {"response": response("completed", [done_message], usage)}),
        ]
        return self._stream(call, events)

    async def _embeddings(self, request: Request) -> Response:
        call = await self._accept(request, "openai")
        if isinstance(call, Response):
            return call
        body = call.body
        raw_input = body.get("input")
        items: list[Any]
        if isinstance(raw_input, str):
            items = [raw_input]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(v, int) for v in raw_input):
            items = [raw_input]  # a single pre-tokenised input
        elif isinstance(raw_input, list) and raw_input:
            items = list(raw_input)
        else:
            return self._error(400, "openai", call.hit, "'input' must be a non-empty string or array.")

        model = str(body.get("model") or "text-embedding-3-small")
        dims = body.get("dimensions")
        if not isinstance(dims, int) or isinstance(dims, bool) or not 0 < dims <= _MAX_EMBEDDING_DIMS:
            dims = self.embedding_dims
        as_base64 = body.get("encoding_format") == "base64"

        data: list[JSONObject] = []
        tokens = 0
        for index, item in enumerate(items):
            vector = _embedding(model, item, dims)
            tokens += len(item) if isinstance(item, list) else _count_tokens(str(item))
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        self._bill(call, model, tokens, 0)
        answer = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _json_response(answer, headers=self._answer_headers(call.hit))

    async def _messages(self, request: Request) -> Response:
        call = await self._accept(request, "anthropic")
        if isinstance(call, Response):
            return call
        body = call.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "anthropic", call.hit, "messages: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return self._error(400, "anthropic", call.hit, "max_tokens: Field required")

        texts = [_text_of(m.get("content")) if isinstance(m, dict) else "" for m in messages]
        system = body.get("system")
        if system is not None:
            texts.append(_text_of(system))
        model = str(body.get("model") or "claude-sonnet-4-6")
        words = _answer_pieces(call, self._n_chunks(body, "max_tokens"))
        text = "".join(words)
        input_tokens = _prompt_tokens(texts)
        self._bill(call, model, input_tokens, len(words))
        message_id = f"msg_fake{call.suffix}"

        def message(content: list[JSONObject], stop_reason: str | None, output_tokens: int) -> JSONObject:
            return {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": output_tokens,
                    "service_tier": "standard",
                },
            }

        if body.get("stream") is not True:
            answer = message([{"type": "text", "text": text}], "end_turn", len(words))
            return _json_response(answer, headers=self._answer_headers(call.hit))

        events = [
            # The real API reports a provisional output_tokens of 1 at message_start.
            _sse_event("message_start", {"message": message([], None, 1)}),
            _sse_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            _sse_event("ping", {}),
        ]
        events += [
            _sse_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
            for word in words
        ]
        events += [
            _sse_event("content_block_stop", {"index": 0}),
            _sse_event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            ),
            _sse_event("message_stop", {}),
        ]
        return self._stream(call, events)

    async def _cohere_chat(self, request: Request) -> Response:
        call = await self._accept(request, "openai")
        if isinstance(call, Response):
            return call
        body = call.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "openai", call.hit, "messages: field required")
        model = str(body.get("model") or "command-a-03-2025")
        words = _answer_pieces(call, self._n_chunks(body, "max_tokens"))
        input_tokens = _prompt_tokens(
            _text_of(m.get("content")) if isinstance(m, dict) else "" for m in messages
        )
        self._bill(call, model, input_tokens, len(words))
        tokens = {"input_tokens": input_tokens, "output_tokens": len(words)}
        usage = {"billed_units": tokens, "tokens": tokens}
        answer_id = f"cohere-fake{call.suffix}"
        if body.get("stream") is not True:
            answer = {
                "id": answer_id,
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": "".join(words)}]},
                "usage": usage,
            }
            return _json_response(answer, headers=self._answer_headers(call.hit))

        events = [
            _sse_event("message-start", {"id": answer_id, "delta": {"message": {"role": "assistant"}}}),
            _sse_event(
                "content-start", {"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}
            ),
        ]
        events += [
            _sse_event("content-delta", {"index": 0, "delta": {"message": {"content": {"text": word}}}})
            for word in words
        ]
        events += [
            _sse_event("content-end", {"index": 0}),
            _sse_event("message-end", {"delta": {"finish_reason": "COMPLETE", "usage": usage}}),
        ]
        return self._stream(call, events)

    async def _gemini(self, request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return PlainTextResponse("Not Found", status_code=404)
        # The streamed and the buffered call of one request get the same answer, as with the other shapes.
        call = await self._accept(request, "openai", seed_path=f"/models/{model}:generateContent")
        if isinstance(call, Response):
            return call
        body = call.body
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._error(400, "openai", call.hit, "contents is not specified")
        texts = [_text_of(c.get("parts")) if isinstance(c, dict) else "" for c in contents]
        system = body.get("systemInstruction")
        if isinstance(system, dict):
            texts.append(_text_of(system.get("parts")))
        config = body.get("generationConfig")
        words = _answer_pieces(
            call, self._n_chunks(config if isinstance(config, dict) else {}, "maxOutputTokens")
        )
        input_tokens = _prompt_tokens(texts)
        self._bill(call, model, input_tokens, len(words))
        usage = {
            "promptTokenCount": input_tokens,
            "candidatesTokenCount": len(words),
            "totalTokenCount": input_tokens + len(words),
        }
        response_id = f"gemini-fake{call.suffix}"

        def answer(text: str, finished: bool) -> JSONObject:
            candidate: JSONObject = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finished:
                candidate["finishReason"] = "STOP"
            # The real API reports usage so far on every chunk; the last one holds the totals.
            return {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id,
            }

        if method == "generateContent":
            return _json_response(answer("".join(words), True), headers=self._answer_headers(call.hit))
        if request.query_params.get("alt") != "sse":
            return self._error(
                400, "openai", call.hit, "The fake API streams Gemini answers only with alt=sse."
            )
        events = [_sse_data(answer(word, index == len(words) - 1)) for index, word in enumerate(words)]
        return self._stream(call, events)


def make_fake_api(latency: float = 0.0, stream_gap: float = 0.0) -> FakeLLMAPI:
    """A FakeLLMAPI with the given answer latency and gap between SSE events, other settings default."""
    return FakeLLMAPI(latency=latency, stream_gap=stream_gap)
