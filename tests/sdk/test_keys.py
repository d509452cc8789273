"""What keeps SDK calls apart and what does not: tenants, per-call timeouts, the per-call opt-out, and the
headers each SDK surface adds to otherwise identical requests."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until
from ..support.choreography import Conductor, HeldAtServer, overlap, overlap_threads
from .support import (
    CLAUDE,
    GPT,
    Direct,
    MakeTransport,
    N,
    anthropic_client,
    async_anthropic_client,
    async_openai_client,
    chat_messages,
    claude_messages,
    completion_text,
    message_text,
    openai_client,
)

HALF = N // 2


@pytest.fixture
def transport(make_transport: MakeTransport) -> CoalescingTransport:
    return make_transport()


def assert_tenants_apart(results: list[tuple[str, str]], api: FakeLLMAPI) -> None:
    """*results* alternate tenant A, tenant B: (x-fake-hit, text). Each tenant had a flight of its own."""
    assert api.hits == 2
    tenant_a, tenant_b = {hit for hit, _ in results[0::2]}, {hit for hit, _ in results[1::2]}
    assert len(tenant_a) == len(tenant_b) == 1
    assert tenant_a != tenant_b
    assert len({text for _, text in results}) == 1  # the same answer, fetched once per tenant


# --------------------------------------------------------------------------------------- tenants


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("option", "header", "values"),
    [
        ("api_key", "authorization", ("sk-tenant-a", "sk-tenant-b")),
        ("organization", "openai-organization", ("org-a", "org-b")),
        ("project", "openai-project", ("proj-a", "proj-b")),
    ],
)
async def test_openai_tenants_firing_identical_bodies_never_share_a_response(
    option: str,
    header: str,
    values: tuple[str, str],
    url: str,
    api: FakeLLMAPI,
    transport: CoalescingTransport,
) -> None:
    tenants: list[dict[str, Any]] = [{option: value} for value in values]
    first, second = (async_openai_client(url, transport, **tenant) for tenant in tenants)
    async with first, second:

        def asker(client: openai.AsyncOpenAI) -> Callable[[], Awaitable[tuple[str, str]]]:
            async def ask() -> tuple[str, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model=GPT, messages=chat_messages("same body for all")
                )
                return raw.headers["x-fake-hit"], completion_text(raw.parse())

            return ask

        results = await overlap(
            Conductor(api, transport, 2 * HALF, flights=2), [asker(first), asker(second)] * HALF
        )
    assert_tenants_apart(results, api)
    assert {headers[header] for headers in api.seen_headers} == {
        f"Bearer {value}" if header == "authorization" else value for value in values
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("client_options", "call_options"),
    [
        (({"api_key": "sk-ant-a"}, {"api_key": "sk-ant-b"}), ({}, {})),
        (({}, {}), ({"workspace_id": "wrkspc_a"}, {"workspace_id": "wrkspc_b"})),
        (({}, {}), ({"user_profile_id": "uprof_a"}, {"user_profile_id": "uprof_b"})),
        (({"default_headers": {"anthropic-beta": "feature-a"}}, {}), ({}, {})),
    ],
    ids=["api_key", "workspace_id", "user_profile_id", "anthropic-beta"],
)
async def test_anthropic_tenants_firing_identical_bodies_never_share_a_response(
    client_options: tuple[dict[str, Any], dict[str, Any]],
    call_options: tuple[dict[str, Any], dict[str, Any]],
    url: str,
    api: FakeLLMAPI,
    transport: CoalescingTransport,
) -> None:
    first, second = (async_anthropic_client(url, transport, **options) for options in client_options)
    async with first, second:

        def asker(
            client: anthropic.AsyncAnthropic, options: dict[str, Any]
        ) -> Callable[[], Awaitable[tuple[str, str]]]:
            async def ask() -> tuple[str, str]:
                raw = await client.messages.with_raw_response.create(
                    model=CLAUDE, max_tokens=8, messages=claude_messages("same body for all"), **options
                )
                return raw.headers["x-fake-hit"], message_text(await raw.parse())

            return ask

        calls = [asker(first, call_options[0]), asker(second, call_options[1])] * HALF
        results = await overlap(Conductor(api, transport, 2 * HALF, flights=2), calls)
    assert_tenants_apart(results, api)
    assert len({api.seen_bodies[0], api.seen_bodies[1]}) == 1  # the same body: only headers told them apart


def test_tenants_in_threads_never_share_a_response(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    with (
        openai_client(url, transport, api_key="sk-tenant-a") as first,
        openai_client(url, transport, api_key="sk-tenant-b") as second,
    ):

        def asker(client: openai.OpenAI) -> Callable[[], tuple[str, str]]:
            def ask() -> tuple[str, str]:
                raw = client.chat.completions.with_raw_response.create(
                    model=GPT, messages=chat_messages("same")
                )
                return raw.headers["x-fake-hit"], completion_text(raw.parse())

            return ask

        results = overlap_threads(
            Conductor(api, transport, 2 * HALF, flights=2), [asker(first), asker(second)] * HALF
        )
    assert_tenants_apart(results, api)


# -------------------------------------------------------------------------------------- timeouts


@pytest.mark.anyio
async def test_openai_calls_with_different_timeouts_still_coalesce(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("patience")
    timeouts = [30.0 + index for index in range(N)]
    async with async_openai_client(url, transport) as client:

        def asker(timeout: float) -> Callable[[], Awaitable[ChatCompletion]]:
            async def ask() -> ChatCompletion:
                return await client.chat.completions.create(
                    model=GPT, messages=chat_messages("patience"), timeout=timeout
                )

            return ask

        completions = await overlap(Conductor(api, transport, N), [asker(timeout) for timeout in timeouts])
    assert api.hits == 1
    assert {completion_text(completion) for completion in completions} == {expected}
    assert api.seen_headers[0]["x-stainless-read-timeout"] in {str(timeout) for timeout in timeouts}


def test_anthropic_calls_with_different_timeouts_still_coalesce(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.message("patience")
    timeouts = [httpx2.Timeout(30.0 + index, connect=5.0) for index in range(N)]
    with anthropic_client(url, transport) as client:

        def asker(timeout: httpx2.Timeout) -> Callable[[], str]:
            def ask() -> str:
                message = client.messages.create(
                    model=CLAUDE, max_tokens=8, messages=claude_messages("patience"), timeout=timeout
                )
                return message_text(message)

            return ask

        texts = overlap_threads(Conductor(api, transport, N), [asker(timeout) for timeout in timeouts])
    assert api.hits == 1
    assert set(texts) == {expected}
    sent = api.seen_headers[0]
    assert sent["x-stainless-timeout"] == sent["x-stainless-read-timeout"]
    assert sent["x-stainless-timeout"] in {str(timeout.read) for timeout in timeouts}


# --------------------------------------------------------------------------------------- opt-out


@pytest.mark.anyio
async def test_openai_opt_out_header_sends_every_call_upstream_without_the_header(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    callers = 10
    async with async_openai_client(url, transport) as client:

        async def ask() -> ChatCompletion:
            return await client.chat.completions.create(
                model=GPT, messages=chat_messages("my own sample"), extra_headers={"x-coalesce": "off"}
            )

        completions = await overlap(HeldAtServer(api, callers), [ask] * callers)
    assert api.hits == callers
    assert len({completion.id for completion in completions}) == callers
    assert all("x-coalesce" not in headers for headers in api.seen_headers)
    stats = transport.stats()
    # Every one reached upstream, each on its own, as the server saw.
    assert (stats.upstream_calls, dict(stats.bypassed)) == (callers, {"opt_out": callers})


def test_anthropic_opt_out_header_sends_every_call_upstream_without_the_header(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    callers = 10
    with anthropic_client(url, transport) as client:

        def ask() -> str:
            with client.messages.stream(
                model=CLAUDE,
                max_tokens=8,
                messages=claude_messages("my own sample"),
                extra_headers={"x-coalesce": "off"},
            ) as stream:
                return stream.get_final_message().id

        ids = overlap_threads(HeldAtServer(api, callers), [ask] * callers)
    assert api.hits == callers
    assert len(set(ids)) == callers
    assert all("x-coalesce" not in headers for headers in api.seen_headers)
    assert dict(transport.stats().bypassed) == {"opt_out": callers}


@pytest.mark.anyio
async def test_an_opted_out_call_does_not_join_or_disturb_the_flight_of_its_twins(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    hold = api.hold = threading.Event()
    async with async_openai_client(url, transport) as client:
        results: dict[str, list[ChatCompletion]] = {"coalesced": [], "opted_out": []}

        async def ask(kind: str, headers: dict[str, str]) -> None:
            results[kind].append(
                await client.chat.completions.create(
                    model=GPT, messages=chat_messages("twins"), extra_headers=headers
                )
            )

        try:
            async with anyio.create_task_group() as group:
                for _ in range(HALF):
                    group.start_soon(ask, "coalesced", {})
                group.start_soon(ask, "opted_out", {"x-coalesce": "off"})
                await until(lambda: transport.stats().waiters == HALF and api.held == 2)
                hold.set()
        finally:
            hold.set()
    assert api.hits == 2
    assert len({completion.id for completion in results["coalesced"]}) == 1
    assert results["opted_out"][0].id not in {completion.id for completion in results["coalesced"]}


# ------------------------------------- headers that depend on the SDK surface, not on the request
#
# The same upstream request, made through a different surface of the same SDK, carries a telemetry header
# the other does not, so the two never share a flight although the server sees the same request:
#   x-stainless-raw-response   openai: "true" (with_raw_response), "stream" (with_streaming_response);
#                              anthropic: "raw" (with_raw_response), "stream" (with_streaming_response)
#   x-stainless-helper-method  openai: "chat.completions.stream", "chat.completions.parse";
#                              anthropic: "stream"
#   x-stainless-stream-helper  anthropic: "messages" (messages.stream)
#   x-stainless-helper         anthropic: "messages.parse"
# None of them is random per call: identical calls through one surface coalesce (see the other files).


class AllAttached:
    """Hold every flight at the server until all callers are attached, however many flights they make."""

    def __init__(self, api: FakeLLMAPI, transport: CoalescingTransport, callers: int) -> None:
        self.api = api
        self.transport = transport
        self.callers = callers
        self._hold = api.hold = threading.Event()

    @property
    def phases(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        stats = self.transport.stats()
        return stats.waiters == self.callers and self.api.held == stats.in_flight

    def release(self, phase: int) -> None:
        self._hold.set()

    def release_all(self) -> None:
        self.api.hold = None
        self._hold.set()


SurfaceCall = Callable[[openai.AsyncOpenAI, Any], Awaitable[str]]


async def _openai_plain(oai: openai.AsyncOpenAI, ant: Any) -> str:
    return completion_text(await oai.chat.completions.create(model=GPT, messages=chat_messages("surface")))


async def _openai_raw(oai: openai.AsyncOpenAI, ant: Any) -> str:
    raw = await oai.chat.completions.with_raw_response.create(model=GPT, messages=chat_messages("surface"))
    return completion_text(raw.parse())


async def _openai_raw_stream(oai: openai.AsyncOpenAI, ant: Any) -> str:
    stream = await oai.chat.completions.create(model=GPT, messages=chat_messages("surface"), stream=True)
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])


async def _openai_stream_helper(oai: openai.AsyncOpenAI, ant: Any) -> str:
    async with oai.chat.completions.stream(model=GPT, messages=chat_messages("surface")) as stream:
        return completion_text(await stream.get_final_completion())


async def _anthropic_plain(oai: openai.AsyncOpenAI, ant: Any) -> str:
    return message_text(
        await ant.messages.create(model=CLAUDE, max_tokens=8, messages=claude_messages("surface"))
    )


async def _anthropic_raw(oai: openai.AsyncOpenAI, ant: Any) -> str:
    raw = await ant.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=8, messages=claude_messages("surface")
    )
    return message_text(await raw.parse())


async def _anthropic_raw_stream(oai: openai.AsyncOpenAI, ant: Any) -> str:
    stream = await ant.messages.create(
        model=CLAUDE, max_tokens=8, messages=claude_messages("surface"), stream=True
    )
    return "".join(
        [
            event.delta.text
            async for event in stream
            if event.type == "content_block_delta" and event.delta.type == "text_delta"
        ]
    )


async def _anthropic_stream_helper(oai: openai.AsyncOpenAI, ant: Any) -> str:
    async with ant.messages.stream(model=CLAUDE, max_tokens=8, messages=claude_messages("surface")) as stream:
        return message_text(await stream.get_final_message())


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("one", "other"),
    [
        (_openai_plain, _openai_raw),
        (_openai_raw_stream, _openai_stream_helper),
        (_anthropic_plain, _anthropic_raw),
        (_anthropic_raw_stream, _anthropic_stream_helper),
    ],
    ids=[
        "openai-with_raw_response",
        "openai-chat.completions.stream",
        "anthropic-with_raw_response",
        "anthropic-messages.stream",
    ],
)
async def test_the_same_request_through_two_surfaces_of_one_sdk_shares_one_flight(
    one: SurfaceCall, other: SurfaceCall, url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    async with async_openai_client(url, transport) as oai, async_anthropic_client(url, transport) as ant:

        def caller(surface: SurfaceCall) -> Callable[[], Awaitable[str]]:
            return lambda: surface(oai, ant)

        texts = await overlap(AllAttached(api, transport, 2 * HALF), [caller(one), caller(other)] * HALF)
    assert len(set(texts)) == 1
    assert api.hits == 1


# ---------------------------------------------------------- every caller keeps its own timeout


@pytest.mark.anyio
async def test_a_follower_with_a_longer_timeout_outlives_the_leaders_timeout(
    url: str, api: FakeLLMAPI, direct: Direct, transport: CoalescingTransport
) -> None:
    expected = direct.chat("timeouts")
    hold = api.hold = threading.Event()
    outcome: dict[str, Any] = {}
    async with async_openai_client(url, transport) as client:

        async def ask(name: str, timeout: float) -> None:
            try:
                outcome[name] = await client.chat.completions.create(
                    model=GPT, messages=chat_messages("timeouts"), timeout=timeout
                )
            except openai.APIError as error:
                outcome[name] = error

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(ask, "leader", 0.5)
                await until(lambda: transport.stats().waiters == 1)
                group.start_soon(ask, "follower", 30.0)
                await until(lambda: "leader" in outcome)
                hold.set()
        finally:
            hold.set()
    assert isinstance(outcome["leader"], openai.APITimeoutError)
    assert isinstance(outcome["follower"], ChatCompletion), outcome["follower"]
    assert completion_text(outcome["follower"]) == expected


@pytest.mark.anyio
async def test_a_follower_with_a_shorter_timeout_times_out_on_its_own(
    url: str, api: FakeLLMAPI, transport: CoalescingTransport
) -> None:
    hold = api.hold = threading.Event()
    outcome: dict[str, Any] = {}
    async with async_openai_client(url, transport) as client:

        async def ask(name: str, timeout: float) -> None:
            try:
                outcome[name] = await client.chat.completions.create(
                    model=GPT, messages=chat_messages("impatient"), timeout=timeout
                )
            except openai.APIError as error:
                outcome[name] = error

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(ask, "leader", 30.0)
                await until(lambda: transport.stats().waiters == 1)
                group.start_soon(ask, "follower", 0.25)
                # A follower may wait for the head as long as its request alone could have taken: the sum of
                # its pool, connect, write and read timeouts (1 s here).
                with anyio.move_on_after(3):
                    await until(lambda: "follower" in outcome)
                hold.set()
        finally:
            hold.set()
    assert isinstance(outcome["follower"], openai.APITimeoutError), outcome["follower"]
    assert isinstance(outcome["leader"], ChatCompletion)
