"""The caller's span says how its request was answered: OpenTelemetry's real httpx
instrumentation, its client span per request, read back through the SDK's in-memory
exporter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from httpx_coalesce import CoalescingTransport

from ..support.choreography import overlapping
from ..upstream import Upstream
from .conftest import burst

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]
OUTCOME = "httpx_coalesce.outcome"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def client_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]


async def test_a_burst_of_twenty_gives_twenty_client_spans_one_led_all_of_one_flight(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    transport = make_transport()
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        HTTPXClientInstrumentor().instrument_client(client, tracer_provider=tracer_provider)
        responses = await burst(
            client, transport, upstream, 20, method="POST", url="/echo", json={"q": "traced"}
        )

    spans = client_spans(exporter)
    assert len(spans) == 20
    attributes = [dict(span.attributes or {}) for span in spans]
    assert [a[OUTCOME] for a in attributes].count("led") == 1
    assert [a[OUTCOME] for a in attributes].count("joined") == 19
    flight_ids = {a["httpx_coalesce.flight_id"] for a in attributes}
    assert flight_ids == {responses[0].extensions["coalesce"].flight_id}
    # Callers that had joined when each got its answer: all twenty, as in CoalesceInfo.
    assert {a["httpx_coalesce.callers"] for a in attributes} == {20}
    assert all("httpx_coalesce.bypass_reason" not in a for a in attributes)


async def test_a_bypassed_request_span_says_why_and_a_window_hit_names_its_flight(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    transport = make_transport(window=60)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        HTTPXClientInstrumentor().instrument_client(client, tracer_provider=tracer_provider)
        await client.post("/echo", json={"q": 1}, headers={"x-coalesce": "off"})
        first = await client.post("/echo", json={"q": 2})
        await client.post("/echo", json={"q": 2})
    bypassed, led, window = (dict(span.attributes or {}) for span in client_spans(exporter))
    assert (bypassed[OUTCOME], bypassed["httpx_coalesce.bypass_reason"]) == ("bypassed", "opt_out")
    assert "httpx_coalesce.flight_id" not in bypassed
    assert (led[OUTCOME], led["httpx_coalesce.callers"]) == ("led", 1)
    assert window[OUTCOME] == "window"
    assert window["httpx_coalesce.flight_id"] == first.extensions["coalesce"].flight_id


def test_a_sync_client_span_carries_the_outcome(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    with httpx.Client(transport=make_transport(), base_url=base_url) as client:
        HTTPXClientInstrumentor().instrument_client(client, tracer_provider=tracer_provider)
        client.get("/echo")
    (span,) = client_spans(exporter)
    assert dict(span.attributes or {})[OUTCOME] == "led"


async def test_a_span_that_is_not_the_requests_own_gets_an_event_per_request(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # With no client span (httpx's global instrumentation sits below this transport),
    # the current span may be a server's request span covering several calls: each
    # call is an event on it, rather than attributes the next call would overwrite.
    tracer = tracer_provider.get_tracer("test")
    async with httpx.AsyncClient(transport=make_transport(), base_url=base_url) as client:
        with tracer.start_as_current_span("handler", kind=SpanKind.SERVER):
            await client.get("/echo?n=1")
            await client.get("/echo?n=2", headers={"x-coalesce": "off"})
    (handler,) = exporter.get_finished_spans()
    assert OUTCOME not in (handler.attributes or {})
    events = [(event.name, dict(event.attributes or {})) for event in handler.events]
    assert [name for name, _ in events] == ["httpx_coalesce.request"] * 2
    assert [attributes[OUTCOME] for _, attributes in events] == ["led", "bypassed"]
    assert events[1][1]["httpx_coalesce.bypass_reason"] == "opt_out"


async def test_without_a_recording_span_nothing_is_noted(
    upstream: Upstream, base_url: str, make_transport: MakeTransport, exporter: InMemorySpanExporter
) -> None:
    async with httpx.AsyncClient(transport=make_transport(), base_url=base_url) as client:
        assert (await client.get("/echo")).status_code == 200
    assert exporter.get_finished_spans() == ()


@pytest.fixture
def globally_instrumented(tracer_provider: TracerProvider) -> Iterator[None]:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.mark.usefixtures("globally_instrumented")
async def test_global_instrumentation_sees_one_upstream_call_under_the_leaders_span(
    upstream: Upstream,
    base_url: str,
    make_transport: MakeTransport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # instrument() wraps httpx's own transports, below ours: one client span for the
    # one call that went out, in the trace of the caller that led it; the callers that
    # joined have no client span, and their own spans get the event.
    tracer = tracer_provider.get_tracer("test")
    transport = make_transport()
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:

        async def handler(number: int) -> None:
            with tracer.start_as_current_span(f"handler {number}", kind=SpanKind.SERVER):
                await client.post("/echo", json={"q": "global"})

        await overlapping(upstream, transport, [partial(handler, number) for number in range(5)])

    (upstream_span,) = client_spans(exporter)
    handlers = {
        span.context.span_id: span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER
    }
    assert len(handlers) == 5
    assert upstream_span.parent is not None
    leader = handlers[upstream_span.parent.span_id]
    assert dict(leader.events[0].attributes or {})[OUTCOME] == "led"
    outcomes = sorted(str(dict(span.events[0].attributes or {})[OUTCOME]) for span in handlers.values())
    assert outcomes == ["joined"] * 4 + ["led"]
