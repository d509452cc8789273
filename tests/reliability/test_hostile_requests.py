"""Hostile or odd requests: they coalesce correctly or pass through, and never disturb
the other callers in flight at the same time.

Every test runs beside "bystanders": callers of an ordinary request held at the
upstream's gate for the whole test. Once the odd requests are in, the gate opens and
every bystander must still get its own, correct answer from exactly one upstream call.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from httpx_coalesce import CoalescingTransport, Limits

from ..conftest import until
from .echo_server import EchoUpstream, echo_line

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]

BYSTANDERS = 10
BOUND = 20.0
BYSTANDER = "/bystander?gate=1&shape=chunked&chunks=3"


async def send_all(client: httpx.AsyncClient, requests: list[httpx.Request]) -> list[Any]:
    """Send *requests* concurrently; each result is its response (read) or its error."""
    results: list[Any] = [None] * len(requests)

    async def one(index: int) -> None:
        try:
            results[index] = await client.send(requests[index])
        except Exception as error:
            results[index] = error

    async with anyio.create_task_group() as group:
        for index in range(len(requests)):
            group.start_soon(one, index)
    return results


def assert_echoes(response: Any, request: httpx.Request, chunks: int = 1, body: bytes | None = None) -> None:
    """The response is the answer to this very request (method, target, credentials, and
    its *body*, by default the request's content)."""
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200
    assert response.request is request
    authorization = next(
        (value for name, value in request.headers.raw if name.lower() == b"authorization"), b""
    )
    target = request.url.raw_path.decode()
    expected = echo_line(request.method, target, authorization, request.content if body is None else body)
    expected *= chunks
    assert response.content == expected


async def alongside_bystanders(
    echo: EchoUpstream,
    transport: CoalescingTransport,
    client: httpx.AsyncClient,
    odd: Callable[[], Any],
    joined: Callable[[], bool],
    figures: Counter[str],
) -> None:
    """Holds bystanders at the gate, runs *odd* (which starts odd requests), opens the
    gate once *joined* holds, then checks every bystander."""
    bystanders = [client.build_request("GET", BYSTANDER) for _ in range(BYSTANDERS)]
    results: list[Any] = []
    echo.close_gate()
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:

            async def hold_bystanders() -> None:
                results.extend(await send_all(client, bystanders))

            group.start_soon(hold_bystanders)
            await until(lambda: transport.stats().waiters >= BYSTANDERS)
            group.start_soon(odd)
            await until(joined)
            echo.open_gate()
    for response, request in zip(results, bystanders, strict=True):
        assert_echoes(response, request, chunks=3)
        assert response.extensions["coalesce"].callers == BYSTANDERS
    assert echo.hits_of("GET", BYSTANDER, b"", b"") == 1
    figures["bystanders"] += BYSTANDERS


async def test_huge_bodies_coalesce_when_in_memory_and_pass_through_whole_when_streamed(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    limit = 64 * 1024
    huge = bytes(range(256)) * (4 * limit // 256)
    transport = make_transport(limits=Limits(max_request_bytes=len(huge)))
    outcomes: list[Any] = []

    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        in_memory = [client.build_request("POST", "/huge?gate=1", content=huge) for _ in range(5)]

        async def streamed_body() -> AsyncIterator[bytes]:
            for start in range(0, len(huge), 8192):
                yield huge[start : start + 8192]

        streamed = [client.build_request("POST", "/huge-streamed", content=streamed_body()) for _ in range(3)]

        async def odd() -> None:
            outcomes.extend(await send_all(client, in_memory + streamed))

        await alongside_bystanders(
            echo,
            transport,
            client,
            odd,
            lambda: (
                transport.stats().waiters == BYSTANDERS + len(in_memory)
                and transport.stats().bypassed.get("streamed_body", 0) == len(streamed)
            ),
            figures,
        )
    for response, request in zip(outcomes[:5], in_memory, strict=True):
        assert_echoes(response, request)
    sha = hashlib.sha256(huge).hexdigest()[:16]
    for response in outcomes[5:]:
        assert response.status_code == 200
        assert response.content.endswith(f"body={sha}\n".encode())  # every byte arrived
    assert echo.hits_of("POST", "/huge?gate=1", b"", huge) == 1
    figures["hostile_requests"] += len(outcomes)


ODD_BODIES = {
    "not-utf8": b"\xff\xfe\x00 not utf-8 \xc3\x28",
    "duplicate-keys": b'{"a": 1, "a": 2}',
    "last-duplicate-alone": b'{"a": 2}',
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
}


async def test_odd_json_bodies_coalesce_by_their_bytes_and_never_share_with_lookalikes(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    transport = make_transport()
    outcomes: list[Any] = []
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        requests = [
            client.build_request("POST", "/odd?gate=1", content=body, headers=headers)
            for body in ODD_BODIES.values()
            for _ in range(4)
        ]

        async def odd() -> None:
            outcomes.extend(await send_all(client, requests))

        await alongside_bystanders(
            echo,
            transport,
            client,
            odd,
            lambda: transport.stats().waiters == BYSTANDERS + len(requests),
            figures,
        )
    for response, request in zip(outcomes, requests, strict=True):
        assert_echoes(response, request)
    # One call per distinct body: {"a": 1, "a": 2} never shares with {"a": 2}.
    for body in ODD_BODIES.values():
        assert echo.hits_of("POST", "/odd?gate=1", b"", body) == 1
    assert transport.stats().in_flight == 0
    figures["hostile_requests"] += len(requests)


async def test_streamed_request_bodies_pass_through_unread_and_arrive_whole(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    transport = make_transport()
    body = b'{"prompt": "' + b"stream " * 1000 + b'"}'
    outcomes: list[Any] = []

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            await anyio.lowlevel.checkpoint()
            yield body[start : start + 100]

    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        requests = [client.build_request("POST", "/streamed?gate=1", content=chunks()) for _ in range(6)]

        async def odd() -> None:
            outcomes.extend(await send_all(client, requests))

        await alongside_bystanders(
            echo,
            transport,
            client,
            odd,
            lambda: transport.stats().bypassed.get("streamed_body", 0) == 6,
            figures,
        )
    for response, request in zip(outcomes, requests, strict=True):
        assert_echoes(response, request, body=body)
    # Each is sent as its caller made it, one call each, as alone.
    assert echo.hits_of("POST", "/streamed?gate=1", b"", body) == 6
    figures["hostile_requests"] += len(requests)


async def test_non_ascii_credentials_keep_tenants_apart(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    transport = make_transport()
    # UTF-8, Latin-1 and ASCII spellings of "café": three tenants, never one (the fourth
    # is the first again, byte for byte, and shares with it).
    tokens = [b"Bearer caf\xc3\xa9", b"Bearer caf\xe9", b"Bearer cafe", "Bearer caf\u00e9".encode()]
    outcomes: list[Any] = []
    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        requests = [
            client.build_request(
                "GET", "/tenant?gate=1", headers=[(b"authorization", token), (b"x-note", b"\xe2\x98\x83")]
            )
            for token in tokens
            for _ in range(3)
        ]

        async def odd() -> None:
            outcomes.extend(await send_all(client, requests))

        await alongside_bystanders(
            echo,
            transport,
            client,
            odd,
            lambda: transport.stats().waiters == BYSTANDERS + len(requests),
            figures,
        )
    for response, request in zip(outcomes, requests, strict=True):
        assert_echoes(response, request)
    for token in set(tokens):
        assert echo.hits_of("GET", "/tenant?gate=1", token, b"") == 1
    figures["hostile_requests"] += len(requests)


async def test_past_max_flights_new_keys_pass_through_and_the_table_stays_bounded(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    max_flights = 8
    transport = make_transport(limits=Limits(max_flights=max_flights))
    outcomes: list[Any] = []
    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        requests = [client.build_request("GET", f"/many/{number}?gate=1") for number in range(60)]
        everyone = sum(echo.hits.values()) + len(requests) + 1  # + the bystanders' one call

        async def odd() -> None:
            outcomes.extend(await send_all(client, requests))

        def all_arrived() -> bool:
            stats = transport.stats()
            assert stats.in_flight <= max_flights
            return sum(echo.hits.values()) == everyone

        # The bystanders hold one flight of the eight.
        await alongside_bystanders(echo, transport, client, odd, all_arrived, figures)
    for response, request in zip(outcomes, requests, strict=True):
        assert_echoes(response, request)
    stats = transport.stats()
    assert stats.bypassed["max_flights"] == len(requests) - (max_flights - 1)
    figures["hostile_requests"] += len(requests)


async def test_past_max_waiters_new_callers_pass_through(
    echo: EchoUpstream, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    transport = make_transport(limits=Limits(max_waiters=BYSTANDERS))
    outcomes: list[Any] = []
    async with httpx.AsyncClient(base_url=echo.url, transport=transport) as client:
        requests = [client.build_request("GET", "/crowd?gate=1") for _ in range(25)]

        async def odd() -> None:
            outcomes.extend(await send_all(client, requests))

        await alongside_bystanders(
            echo,
            transport,
            client,
            odd,
            lambda: echo.hits_of("GET", "/crowd?gate=1", b"", b"") == 1 + 25 - BYSTANDERS,
            figures,
        )
    for response, request in zip(outcomes, requests, strict=True):
        assert_echoes(response, request)
    assert transport.stats().bypassed["max_waiters"] == 25 - BYSTANDERS
    figures["hostile_requests"] += len(requests)
