"""The OpenTelemetry metrics, read back through the SDK's in-memory reader: exact counts
for what the transport did against a real loopback server, and the same figures as
``stats()``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import httpx
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._telemetry import INSTRUMENTS
from httpx_coalesce.redis import RedisBackend

from ..support.redis_server import closed_port_url
from ..upstream import Upstream
from .conftest import Readings, assert_agrees, burst, burst_sync, outcomes

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]
REQUESTS = "httpx_coalesce.requests"
UPSTREAM = "httpx_coalesce.upstream_calls"


async def test_a_burst_counts_one_led_the_rest_joined_and_one_upstream_call(
    lib: ModuleType,
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider)

    def while_they_wait() -> None:
        # One flight, twenty callers, and nothing counted yet.
        during = Readings(reader)
        assert during.sum("httpx_coalesce.flights.active") == 1
        assert during.sum("httpx_coalesce.waiters.active") == 20
        assert_agrees(transport.stats(), during)

    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        responses = await burst(
            client,
            transport,
            upstream,
            20,
            method="POST",
            url="/echo",
            json={"q": "burst"},
            while_waiting=while_they_wait,
        )

    readings = Readings(reader)
    assert outcomes(readings) == {"led": 1, "joined": 19}
    assert readings.sum(REQUESTS, {"http.request.method": "POST", "server.address": "127.0.0.1"}) == 20
    assert readings.sum(UPSTREAM, {"http.request.method": "POST", "server.address": "127.0.0.1"}) == 1
    assert readings.histogram("httpx_coalesce.flight.callers") == (1, 20)
    size = len(responses[0].content)
    assert readings.sum("httpx_coalesce.bytes_saved") == 19 * size
    # The server's usage block: 10 prompt tokens, 5 completion tokens.
    assert readings.sum("httpx_coalesce.tokens_saved", {"gen_ai.token.type": "input"}) == 19 * 10
    assert readings.sum("httpx_coalesce.tokens_saved", {"gen_ai.token.type": "output"}) == 19 * 5
    assert readings.sum("httpx_coalesce.flights.active") == 0
    assert readings.sum("httpx_coalesce.waiters.active") == 0
    stats = transport.stats()
    assert dict(stats.tokens_saved_by_type) == {"input": 190, "output": 95}
    assert_agrees(stats, readings)


async def test_a_bypass_is_counted_with_its_reason_and_as_an_upstream_call(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        await client.post("/echo?secret=hunter2", json={"q": 1}, headers={"x-coalesce": "off"})
        await client.put("/echo", json={"q": 2})
    readings = Readings(reader)
    assert outcomes(readings) == {"bypassed": 2}
    assert readings.sum(REQUESTS, {"httpx_coalesce.bypass_reason": "opt_out"}) == 1
    assert (
        readings.sum(REQUESTS, {"httpx_coalesce.bypass_reason": "method", "http.request.method": "PUT"}) == 1
    )
    # Pass-through requests reached the inner transport: they are upstream calls.
    assert readings.sum(UPSTREAM) == 2
    assert readings.histogram("httpx_coalesce.flight.callers") == (0, 0)
    assert_agrees(transport.stats(), readings)


async def test_a_window_hit_is_counted_as_window_and_saves_the_body(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider, window=60)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        first = await client.post("/echo", json={"q": "late"})
        second = await client.post("/echo", json={"q": "late"})
    assert second.extensions["coalesce"].from_window
    readings = Readings(reader)
    assert outcomes(readings) == {"led": 1, "window": 1}
    assert readings.sum(UPSTREAM) == 1
    # A flight of one shared nothing: not in the histogram (see Counters.flight_ended).
    assert readings.histogram("httpx_coalesce.flight.callers") == (0, 0)
    assert readings.sum("httpx_coalesce.bytes_saved") == len(first.content)
    assert readings.sum("httpx_coalesce.tokens_saved") == 15
    assert_agrees(transport.stats(), readings)


async def test_a_live_stream_shared_by_five_is_one_flight_of_five(
    lib: ModuleType,
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider)
    async with lib.AsyncClient(transport=transport, base_url=base_url) as client:
        responses = await burst(client, transport, upstream, 5, method="POST", url="/sse?events=4", json={})
    assert all(response.headers["content-type"].startswith("text/event-stream") for response in responses)
    readings = Readings(reader)
    assert outcomes(readings) == {"led": 1, "joined": 4}
    assert readings.sum(UPSTREAM) == 1
    assert readings.histogram("httpx_coalesce.flight.callers") == (1, 5)
    assert readings.sum("httpx_coalesce.bytes_saved") == 4 * len(responses[0].content)
    assert readings.sum("httpx_coalesce.tokens_saved") == 0  # the stream reports no usage
    assert_agrees(transport.stats(), readings)


async def test_unreachable_redis_is_a_backend_error_by_type_and_the_request_still_goes_upstream(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(
        meter_provider=meter_provider, backend=RedisBackend.from_url(closed_port_url())
    )
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        for number in range(2):
            assert (await client.get(f"/echo?n={number}")).status_code == 200
    readings = Readings(reader)
    # The first finds Redis closed; the second skips it during the back-off.
    assert (
        readings.sum("httpx_coalesce.backend.errors", {"error.type": "redis.exceptions.ConnectionError"}) == 1
    )
    assert readings.sum("httpx_coalesce.backend.errors", {"error.type": "backoff"}) == 1
    assert outcomes(readings) == {"led": 2}
    assert readings.sum(UPSTREAM) == 2
    assert_agrees(transport.stats(), readings)


def test_a_sync_burst_is_counted_as_an_async_one(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider)
    with httpx.Client(transport=transport, base_url=base_url) as client:
        burst_sync(client, transport, upstream, 8, method="POST", url="/echo", json={"q": "sync"})
    readings = Readings(reader)
    assert outcomes(readings) == {"led": 1, "joined": 7}
    assert readings.sum(UPSTREAM) == 1
    assert readings.histogram("httpx_coalesce.flight.callers") == (1, 8)
    assert_agrees(transport.stats(), readings)


async def test_two_transports_on_one_provider_add_up(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    first = make_transport(meter_provider=meter_provider)
    second = make_transport(meter_provider=meter_provider)
    for transport in (first, second):
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            await client.get("/echo")
    readings = Readings(reader)
    assert outcomes(readings) == {"led": 2}
    assert readings.sum(UPSTREAM) == 2


async def test_attributes_hold_no_credential_query_or_body(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(meter_provider=meter_provider)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        for headers in ({}, {"x-coalesce": "off"}):
            await client.post(
                "/echo?api_key=query-secret",
                json={"prompt": "body-secret"},
                headers={"authorization": "Bearer header-secret", **headers},
            )
    readings = Readings(reader)
    values = " ".join(readings.attribute_values())
    for secret in ("query-secret", "body-secret", "header-secret", "api_key", "/echo"):
        assert secret not in values
    # Nor a key, nor a flight id (one per flight: unbounded cardinality; spans carry it).
    keys = {key for points in readings.points.values() for point in points for key in point.attributes}
    assert keys <= {
        "httpx_coalesce.outcome",
        "httpx_coalesce.bypass_reason",
        "http.request.method",
        "server.address",
        "gen_ai.token.type",
    }


async def test_a_noop_provider_records_nothing_and_costs_no_instrument(
    upstream: Upstream, base_url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(meter_provider=NoOpMeterProvider())
    assert transport._counters.recorder.telemetry is None
    assert transport._counters.recorder.probe is None
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        assert (await client.get("/echo")).status_code == 200
    assert transport.stats().upstream_calls == 1


def test_instruments_have_the_documented_names_kinds_and_units(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    transport = make_transport(
        meter_provider=meter_provider, backend=RedisBackend.from_url(closed_port_url())
    )
    with httpx.Client(transport=transport, base_url=base_url) as client:
        burst_sync(client, transport, upstream, 2, method="POST", url="/echo", json={})
    metrics = Readings(reader).metrics
    kinds = {
        name: (type(metric.data).__name__, getattr(metric.data, "is_monotonic", None), metric.unit)
        for name, metric in metrics.items()
    }
    assert kinds == {
        "httpx_coalesce.requests": ("Sum", True, "{request}"),
        "httpx_coalesce.upstream_calls": ("Sum", True, "{request}"),
        "httpx_coalesce.flight.callers": ("Histogram", None, "{request}"),
        "httpx_coalesce.flights.active": ("Sum", False, "{flight}"),
        "httpx_coalesce.waiters.active": ("Sum", False, "{request}"),
        "httpx_coalesce.bytes_saved": ("Sum", True, "By"),
        "httpx_coalesce.tokens_saved": ("Sum", True, "{token}"),
        "httpx_coalesce.backend.errors": ("Sum", True, "{error}"),
    }
    # httpx_coalesce.cost_saved records only a priced LLM answer: tests/cost checks it.
    assert {name: metrics[name].description for name in metrics} == {
        name: description for name, _, _, description in INSTRUMENTS if name != "httpx_coalesce.cost_saved"
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("prometheus", "must be an opentelemetry.metrics.MeterProvider"),
        (MeterProvider().get_meter("x"), "that is a Meter"),
        (InMemoryMetricReader(), "that is a metric reader"),
    ],
)
def test_a_wrong_meter_provider_is_refused_when_the_transport_is_built(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        CoalescingTransport(meter_provider=value)  # type: ignore[arg-type]
