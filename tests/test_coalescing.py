"""Coalescing against a real HTTP server on loopback, async, on asyncio and trio,
with httpx and httpx2."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import anyio
import orjson
import pytest

from httpx_coalesce import CoalescingTransport, Limits

from .conftest import until
from .support.choreography import overlapping
from .upstream import Upstream

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]


async def test_hundred_identical_posts_make_one_upstream_call(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:

        async def call() -> Any:
            return await client.send(
                client.build_request("POST", "/echo", json={"q": "amortization"}), stream=True
            )

        responses = await overlapping(upstream, transport, [call] * 100)

        assert upstream.hits["/echo"] == 1
        # Each response is its own: read some, close others unread, in any order.
        bodies = []
        for index, response in enumerate(responses):
            if index % 3 == 0:
                await response.aclose()
            else:
                bodies.append(await response.aread())
                await response.aclose()
        assert len(set(bodies)) == 1
        assert orjson.loads(bodies[0])["hit"] == 1
        assert len({id(response) for response in responses}) == 100
        assert len({id(response.stream) for response in responses}) == 100
        infos = [response.extensions["coalesce"] for response in responses]
        assert sum(info.leader for info in infos) == 1
        assert {info.flight_id for info in infos} == {infos[0].flight_id}
        # The leader's is the inner transport's own response, as alone; the others
        # never see the leader's connection.
        assert all(
            "network_stream" not in response.extensions
            for response in responses
            if not response.extensions["coalesce"].leader
        )
        stats = transport.stats()
        assert (stats.requests, stats.upstream_calls, stats.coalesced) == (100, 1, 99)
        assert stats.tokens_saved == 15 * 99


async def test_buffered_body_is_one_bytes_object_shared_by_all(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        results = await overlapping(upstream, transport, [lambda: client.post("/echo", json={"q": 1})] * 10)
    assert len({id(response.content) for response in results}) == 1


async def test_json_key_order_and_white_space_still_coalesce(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    bodies = [b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}', b'  {"b" : [ 1 , 2 ] , "a":1 }\n']
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        calls = [
            partial(client.post, "/echo", content=body, headers={"content-type": "application/json"})
            for body in bodies
        ]
        await overlapping(upstream, transport, calls)
    assert upstream.hits["/echo"] == 1


@pytest.mark.parametrize(
    "variant",
    [
        {"json": {"q": "other"}},
        {"url": "/echo?page=2"},
        {"method": "PUT"},
        {"headers": {"authorization": "Bearer tenant-b"}},
        {"headers": {"x-api-key": "key-b"}},
        {"headers": {"cookie": "session=b"}},
        {"headers": {"openai-organization": "org-b"}},
        {"headers": {"anthropic-beta": "tools"}},
    ],
    ids=lambda variant: next(iter(variant.values())).__repr__()[:40],
)
async def test_a_different_body_url_method_or_credential_never_coalesces(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport, variant: dict[str, Any]
) -> None:
    transport = make_transport(methods={"GET", "POST", "PUT"})
    base = {"method": "POST", "url": "/echo", "json": {"q": "same"}, "headers": {"authorization": "Bearer a"}}
    other = {**base, **variant}
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        await overlapping(
            upstream,
            transport,
            [partial(client.request, **options) for options in (base, other)],
            # Two upstream calls, or (were they coalesced) two waiters on one.
            ready=lambda: upstream.total == 2 or transport.stats().waiters == 2,
        )
    assert upstream.hits["/echo"] == 2


async def test_interleaved_tenants_never_see_each_others_responses(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    tenants = [f"Bearer sk-tenant-{number}" for number in range(8)]
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:

        async def ask(token: str) -> tuple[str, Any]:
            response = await client.post(
                "/echo", json={"q": "same for all"}, headers={"authorization": token}
            )
            return token, response.json()

        seen = await overlapping(
            upstream, transport, [partial(ask, token) for _ in range(10) for token in tenants]
        )
    assert upstream.hits["/echo"] == len(tenants)
    crossed = [
        token for token, body in seen if body["auth_sha"] != hashlib.sha256(token.encode()).hexdigest()
    ]
    assert crossed == []


async def test_leader_cancellation_does_not_cancel_waiters(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        results: list[Any] = []

        async def follower() -> None:
            results.append(await client.post("/echo", json={"q": 1}))

        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await client.post("/echo", json={"q": 1})

        async with anyio.create_task_group() as group:
            group.start_soon(leader)
            await until(lambda: upstream.arrived.is_set())
            for _ in range(5):
                group.start_soon(follower)
            await until(lambda: transport.stats().waiters == 6)
            leader_scope.cancel()
            await until(lambda: transport.stats().waiters == 5)
            upstream.gate.set()
    assert [response.status_code for response in results] == [200] * 5
    assert upstream.hits["/echo"] == 1


async def test_all_callers_cancelled_cancels_the_upstream_call(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(lambda: client.post("/echo", json={"q": 1}))
            await until(lambda: upstream.arrived.is_set() and transport.stats().waiters == 5)
            group.cancel_scope.cancel()
        assert transport.stats().in_flight == 0
        assert transport.stats().cancelled_flights == 1
        # The server sees the connection go: the call was really cancelled upstream.
        await until(lambda: upstream.disconnects == 1)
        # A new call of the same key is a new flight.
        upstream.gate.set()
        response = await client.post("/echo", json={"q": 1})
        assert response.extensions["coalesce"].leader


async def test_upstream_reset_gives_every_waiter_its_own_error_and_next_call_is_a_new_flight(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:

        async def call() -> tuple[Any, Any]:
            request = client.build_request("POST", "/reset", json={"q": 1})
            try:
                await client.send(request)
            except lib.TransportError as error:
                return request, error
            raise AssertionError("the reset reached this caller as a response")

        errors = await overlapping(upstream, transport, [call] * 6)
        assert upstream.hits["/reset"] == 1
        assert len(errors) == 6
        assert len({id(error) for _, error in errors}) == 6
        # What a lone client sees here: ReadError on async, RemoteProtocolError on sync.
        assert len({type(error) for _, error in errors}) == 1
        assert isinstance(errors[0][1], lib.ReadError | lib.RemoteProtocolError)
        assert all(error.request is request for request, error in errors)
        with pytest.raises((lib.ReadError, lib.RemoteProtocolError)):
            await client.post("/reset", json={"q": 1})
        assert upstream.hits["/reset"] == 2


async def test_upstream_timeout_reaches_every_waiter_as_a_timeout(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    errors: list[BaseException] = []
    async with lib.AsyncClient(transport=transport, base_url=base_url, timeout=0.2) as client:

        async def call() -> None:
            try:
                await client.get("/slow?seconds=2")
            except lib.ReadTimeout as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(call)
    assert len(errors) == 4
    assert upstream.hits["/slow"] == 1


async def test_connect_error_reaches_every_waiter(lib: ModuleType, make_transport: MakeTransport) -> None:
    transport = make_transport()
    errors: list[BaseException] = []
    async with lib.AsyncClient(transport=transport) as client:

        async def call() -> None:
            try:
                await client.get("http://127.0.0.1:9/nothing-listens-here")
            except lib.ConnectError as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(call)
    assert len(errors) == 4
    assert len({id(error) for error in errors}) == 4


async def test_error_responses_are_shared(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        responses = await overlapping(upstream, transport, [lambda: client.post("/status/429", json={})] * 5)
    statuses = [response.status_code for response in responses]
    assert statuses == [429] * 5
    assert upstream.hits["/status/429"] == 1


async def test_gzip_responses_decode_for_every_waiter(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        responses = await overlapping(upstream, transport, [lambda: client.get("/gzip")] * 5)
    texts = [response.text for response in responses]
    assert texts == ["coalesced and compressed " * 200] * 5
    assert upstream.hits["/gzip"] == 1
    assert gzip.compress(b"") is not None


async def test_no_content_and_head_work(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        empty = await client.post("/empty", json={})
        head = await client.head("/echo")
    assert (empty.status_code, empty.content) == (204, b"")
    assert (head.status_code, head.content) == (200, b"")


async def test_request_body_in_memory_over_the_limit_passes_through_whole(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(limits=Limits(max_request_bytes=1000))
    body = b"y" * 5000
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        response = await client.post("/echo", content=body)
    assert response.json()["body_sha"] == hashlib.sha256(body).hexdigest()
    assert "coalesce" not in response.extensions
    assert transport.stats().bypassed == {"body_too_large": 1}


async def test_streamed_request_body_passes_through_unread(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    # Reading it to make a key would change what the inner transport gets (a one-shot
    # body made replayable): it goes as the caller made it, whatever its size.
    transport = make_transport()
    body = b'{"q": "streamed"}'

    async def stream() -> Any:
        yield body[:5]
        yield body[5:]

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        request = client.build_request(
            "POST", "/echo", content=stream(), headers={"content-type": "application/json"}
        )
        sent_stream = request.stream
        response = await client.send(request)
    assert response.json()["body_sha"] == hashlib.sha256(body).hexdigest()
    assert "coalesce" not in response.extensions
    assert response.request is request
    assert request.stream is sent_stream
    assert not hasattr(request, "_content")
    stats = transport.stats()
    assert (dict(stats.bypassed), stats.upstream_calls) == ({"streamed_body": 1}, 1)


async def test_opt_out_header_passes_through_and_is_not_sent(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        response = await client.post("/echo", json={}, headers={"x-coalesce": "off"})
        by_extension = await client.send(
            client.build_request("POST", "/echo", json={}, extensions={"coalesce": False})
        )
    assert "coalesce" not in response.extensions
    assert "coalesce" not in by_extension.extensions
    assert response.request.headers.get("x-coalesce") is None
    assert transport.stats().bypassed == {"opt_out": 2}


async def test_finished_flight_is_gone_before_waiters_return_so_retries_lead_again(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        first = await client.post("/status/500", json={})
        second = await client.post("/status/500", json={})
    assert first.extensions["coalesce"].leader
    assert second.extensions["coalesce"].leader
    assert upstream.hits["/status/500"] == 2


async def test_window_serves_late_arrivals_but_never_errors(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(window=30.0)
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        first = await client.post("/echo", json={"q": 1})
        late = await client.post("/echo", json={"q": 1})
        await client.post("/status/500", json={})
        await client.post("/status/500", json={})
    assert late.content == first.content
    assert late.extensions["coalesce"].from_window
    assert upstream.hits["/echo"] == 1
    assert upstream.hits["/status/500"] == 2
    assert transport.stats().window_hits == 1


async def test_flight_limit_reached_passes_through(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(limits=Limits(max_flights=1))
    upstream.hold()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: client.post("/echo", json={"q": 1}))
            await until(lambda: transport.stats().in_flight == 1)
            group.start_soon(lambda: client.post("/echo", json={"q": 2}))
            await until(lambda: upstream.hits["/echo"] == 2)
            upstream.gate.set()
    assert transport.stats().bypassed == {"max_flights": 1}


async def test_a_follower_with_a_shorter_timeout_times_out_alone(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    upstream.hold()
    outcomes: dict[str, Any] = {}
    async with lib.AsyncClient(transport=transport, base_url=base_url, timeout=30) as client:

        async def call(name: str, timeout: float) -> None:
            try:
                outcomes[name] = await client.post("/echo", json={"q": 1}, timeout=timeout)
            except lib.ReadTimeout as error:
                outcomes[name] = error

        async with anyio.create_task_group() as group:
            group.start_soon(call, "leader", 30)
            await until(lambda: upstream.arrived.is_set())
            group.start_soon(call, "impatient", 0.05)
            group.start_soon(call, "patient", 30)
            await until(lambda: isinstance(outcomes.get("impatient"), lib.ReadTimeout))
            upstream.gate.set()
    assert outcomes["leader"].status_code == outcomes["patient"].status_code == 200
    assert outcomes["impatient"].request.url.path == "/echo"
    assert upstream.hits["/echo"] == 1


async def test_a_follower_with_a_longer_timeout_outlives_the_leaders_timeout(
    lib: ModuleType, upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    outcomes: dict[str, Any] = {}
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:

        async def call(name: str, timeout: float) -> None:
            try:
                outcomes[name] = await client.get("/slow?seconds=0.5", timeout=timeout)
            except lib.ReadTimeout as error:
                outcomes[name] = error

        async with anyio.create_task_group() as group:
            group.start_soon(call, "leader", 0.1)
            await until(lambda: upstream.hits["/slow"] == 1)
            group.start_soon(call, "patient", 10)
    assert isinstance(outcomes["leader"], lib.ReadTimeout)
    # Alone it would have had its answer: it led a flight of its own instead of failing.
    assert outcomes["patient"].status_code == 200
    assert outcomes["patient"].extensions["coalesce"].leader
    assert upstream.hits["/slow"] == 2


async def test_when_no_task_can_be_started_the_request_passes_through(
    lib: ModuleType,
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(job: Any) -> None:
        raise RuntimeError("no tasks today")

    monkeypatch.setattr("httpx_coalesce._transport.spawn_detached", refuse)
    transport = make_transport()
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        response = await client.post("/echo", json={"q": 1})
    assert response.status_code == 200
    assert "coalesce" not in response.extensions
    assert transport.stats().bypassed == {"abandoned": 1}
