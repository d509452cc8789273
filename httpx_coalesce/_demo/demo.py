"""The demo: a burst of identical LLM calls, with and without coalescing, and what each one costs.

It starts a fake LLM API on loopback that behaves as the real ones do where it matters here: each API key
may send so many requests per minute (past that: 429 with retry-after), and every answer's tokens are
billed at a price per token: the model's real list price, from genai-prices (Pydantic's price list of LLM
APIs, shipped in the package). Then it fires N identical chat completions at once through the real OpenAI
SDK (over httpx2, with the SDK's own retries), once through a plain client and once through one with
CoalescingTransport, buffered and streamed, and prints what reached the API and what it billed.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import anyio
import genai_prices
import httpx2
import openai

from .._cost import price_list_version, wait_priced
from .._transport import CoalescingTransport
from .fake_api import FakeLLMAPI, Price, RateLimit
from .server import LocalServer

__all__ = ["MODEL", "Row", "Settings", "list_price", "main", "run", "table"]

#: A real model, billed at its real list price.
MODEL = "gpt-4o"
PROVIDER = "openai"
API_KEY = "sk-demo"

# A shared document to summarise: the kind of prompt many users (or workers) send at the same moment, and
# long enough (about 1,000 tokens) that its price shows.
_REPORT = (
    "Incident 4711. At 09:12 UTC the checkout service began timing out for about a third of requests. "
    "The on-call engineer traced it to a connection pool exhausted by a slow payment provider; retries "
    "from three services multiplied the load. Mitigation: the pool was raised, retries were capped, and "
    "the provider's status page confirmed a partial outage that ended at 09:47 UTC. "
)
DOCUMENT = "".join(f"Section {n}. {_REPORT}" for n in range(1, 11))
QUESTION = "Summarise this incident report for the status page, in plain words."


@dataclass(frozen=True)
class Settings:
    """One run of the demo. ``slice_seconds`` only shortens the rate limit's slices, for the tests."""

    requests: int = 50
    latency: float = 0.5
    requests_per_minute: int = 1200
    answer_tokens: int = 200
    max_retries: int = 5
    slice_seconds: float = 1.0


@dataclass(frozen=True)
class Row:
    mode: str
    client: str
    callers: int
    upstream_calls: int
    rate_limited: int
    failed: int
    seconds: float
    input_tokens: int
    output_tokens: int
    cost: float
    answers: frozenset[str]
    #: What the transport's ``stats()`` says it saved (None for the plain client).
    cost_saved: Decimal | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _messages() -> list[openai.types.chat.ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"{QUESTION}\n\n{DOCUMENT}"}]


async def burst(api: FakeLLMAPI, url: str, settings: Settings, stream: bool, coalesce: bool) -> Row:
    api.reset()
    # One connection per caller for the plain client, so what limits it is the API, not a local pool.
    limits = httpx2.Limits(max_connections=settings.requests)
    transport = CoalescingTransport() if coalesce else None
    http_client = httpx2.AsyncClient(transport=transport, limits=limits)
    answers: list[str] = []
    failed = 0
    async with openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key=API_KEY,
        http_client=http_client,
        max_retries=settings.max_retries,
        timeout=60,
    ) as client:

        async def call() -> None:
            nonlocal failed
            try:
                if stream:
                    chunks = await client.chat.completions.create(
                        model=MODEL,
                        messages=_messages(),
                        max_tokens=settings.answer_tokens,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    answers.append(
                        "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                    )
                else:
                    completion = await client.chat.completions.create(
                        model=MODEL, messages=_messages(), max_tokens=settings.answer_tokens
                    )
                    answers.append(completion.choices[0].message.content or "")
            except openai.APIError:
                # Retries exhausted (or any other API error): the caller got no answer, which the table shows.
                failed += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(settings.requests):
                group.start_soon(call)
        seconds = time.perf_counter() - started
    bill = api.bill(API_KEY)
    cost_saved = None
    if transport is not None:
        # Answers are priced in a worker thread as their flights end.
        await anyio.to_thread.run_sync(wait_priced, 10.0)
        cost_saved = transport.stats().cost_saved
    return Row(
        mode="streamed (SSE)" if stream else "buffered JSON",
        client="CoalescingTransport" if coalesce else "plain httpx2",
        callers=settings.requests,
        upstream_calls=api.hits,
        rate_limited=api.rate_limited,
        failed=failed,
        seconds=seconds,
        input_tokens=bill.input_tokens,
        output_tokens=bill.output_tokens,
        cost=bill.cost,
        answers=frozenset(answers),
        cost_saved=cost_saved,
    )


def table(rows: Sequence[Row]) -> str:
    header = (
        "mode",
        "client",
        "callers",
        "upstream calls",
        "429s",
        "failed",
        "wall time",
        "tokens billed",
        "est. cost",
    )
    cells = [
        (
            r.mode,
            r.client,
            str(r.callers),
            str(r.upstream_calls),
            str(r.rate_limited),
            str(r.failed),
            f"{r.seconds:.2f} s",
            f"{r.tokens:,}",
            f"${r.cost:.4f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return (
            "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(c) for c in cells)])


async def run(settings: Settings) -> list[Row]:
    limit = RateLimit(settings.requests_per_minute, slice_seconds=settings.slice_seconds)
    # The stream takes about as long again as the wait for its first token, as a real answer does.
    gap = settings.latency / max(1, settings.answer_tokens)
    api = FakeLLMAPI(latency=settings.latency, stream_gap=gap, rate_limit=limit, prices={MODEL: list_price()})
    with LocalServer(api.app, on_stop=api.close) as server:
        rows = []
        for stream in (False, True):
            for coalesce in (False, True):
                rows.append(await burst(api, server.url, settings, stream, coalesce))
        return rows


def list_price(model: str = MODEL) -> Price:
    """*model*'s list price today, per million tokens, from genai-prices."""

    def per_million(**tokens: int) -> float:
        usage = genai_prices.Usage(**tokens)
        return float(genai_prices.calc_price(usage, model, provider_id=PROVIDER).total_price)

    return Price(per_million(input_tokens=1_000_000), per_million(output_tokens=1_000_000))


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {text}")
    return value


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m httpx_coalesce demo", description=__doc__)
    parser.add_argument(
        "--requests",
        type=_count,
        default=defaults.requests,
        help="identical calls in the burst (%(default)s)",
    )
    parser.add_argument(
        "--latency",
        type=_seconds,
        default=defaults.latency,
        help="seconds the fake API takes to its first token (%(default)s)",
    )
    parser.add_argument(
        "--rpm",
        type=_count,
        default=defaults.requests_per_minute,
        help="the fake API's rate limit per key, requests per minute, enforced per second (%(default)s)",
    )
    parser.add_argument(
        "--max-retries",
        type=_retries,
        default=defaults.max_retries,
        help="the OpenAI SDK's max_retries (%(default)s)",
    )
    options = parser.parse_args(argv)
    settings = Settings(
        requests=options.requests,
        latency=options.latency,
        requests_per_minute=options.rpm,
        max_retries=options.max_retries,
    )
    limit = RateLimit(settings.requests_per_minute)
    price = list_price()
    print(
        f"A burst of {settings.requests} identical chat completions: a ~1,000-token document to summarise, "
        f"{settings.answer_tokens}-token answers.\n"
        f"Client: the OpenAI SDK over httpx2, max_retries={settings.max_retries}.\n"
        f"API: a local fake LLM API, {settings.latency:.2f} s to first token, "
        f"{limit.requests_per_minute:,} requests/min per key ({limit.per_slice} per second), "
        "429 with retry-after past that.\n"
    )
    rows = anyio.run(run, settings)
    print(table(rows))
    print(
        f"\nest. cost: at OpenAI's list prices for '{MODEL}' (${price.input_per_million:.2f} per million "
        f"input tokens, ${price.output_per_million:.2f} per million output tokens),\n"
        f"from the price list genai-prices {price_list_version()}: an estimate, not a bill."
    )
    plain, ours = rows[0], rows[1]
    print(
        f"With coalescing the API saw {ours.upstream_calls} call(s) instead of {plain.upstream_calls}, "
        f"sent {ours.rate_limited} 429s instead of {plain.rate_limited}, and billed ${ours.cost:.4f} "
        f"instead of ${plain.cost:.4f}.\n"
        f"The transport's own estimate, stats().cost_saved: ${ours.cost_saved or 0:.4f} saved."
    )
    return 0
