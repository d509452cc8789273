"""``CoalescingTransport(telemetry=False)``: not one call into OpenTelemetry, for programs
that need their spans untouched; and a bad value refused at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import opentelemetry.metrics
import opentelemetry.trace
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from httpx_coalesce import CoalescingTransport

from ..upstream import Upstream

MakeTransport = Callable[..., CoalescingTransport]


@pytest.fixture
def otel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The API's entry points the transport uses, each call noted by name."""
    calls: list[str] = []
    for module, name in (
        (opentelemetry.trace, "get_current_span"),
        (opentelemetry.metrics, "get_meter_provider"),
    ):
        real = getattr(module, name)

        def noted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, noted)
    return calls


def _requests(transport: CoalescingTransport, base_url: str) -> None:
    with httpx.Client(transport=transport, base_url=base_url) as client:
        assert client.post("/echo", json={"q": "sync"}).status_code == 200

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            assert (await client.post("/echo", json={"q": "async"})).status_code == 200

    anyio.run(main)


def test_with_telemetry_off_the_transport_makes_no_opentelemetry_call(
    upstream: Upstream, base_url: str, make_transport: MakeTransport, otel_calls: list[str]
) -> None:
    transport = make_transport(telemetry=False)
    _requests(transport, base_url)
    assert otel_calls == []
    recorder = transport._counters.recorder
    assert (recorder.telemetry, recorder.probe, recorder.note_span) == (None, None, None)
    assert transport.stats().requests == 2  # stats() does not depend on it


def test_with_telemetry_on_the_same_requests_do_call_opentelemetry(
    upstream: Upstream, base_url: str, make_transport: MakeTransport, otel_calls: list[str]
) -> None:
    # The control for the test above: the patched entry points are the ones used. (In a
    # span: with none at all in the context, the transport finds so without a call.)
    with opentelemetry.trace.use_span(opentelemetry.trace.INVALID_SPAN):
        _requests(make_transport(), base_url)
    assert set(otel_calls) == {"get_current_span", "get_meter_provider"}


@pytest.mark.parametrize("telemetry", [True, False], ids=["on", "off"])
def test_with_telemetry_off_the_callers_span_is_left_untouched(
    upstream: Upstream, base_url: str, make_transport: MakeTransport, telemetry: bool
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with httpx.Client(transport=make_transport(telemetry=telemetry), base_url=base_url) as client:
            HTTPXClientInstrumentor().instrument_client(client, tracer_provider=provider)
            client.get("/echo")
    finally:
        provider.shutdown()
    (span,) = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]
    ours = sorted(name for name in (span.attributes or {}) if name.startswith("httpx_coalesce."))
    assert bool(ours) is telemetry, ours


@pytest.mark.parametrize("value", ["off", 0, None])
def test_telemetry_that_is_not_a_bool_is_refused_at_construction(value: object) -> None:
    options: dict[str, Any] = {"telemetry": value}
    with pytest.raises(TypeError, match="telemetry must be True or False"):
        CoalescingTransport(**options)


def test_telemetry_off_with_a_meter_provider_is_refused_at_construction() -> None:
    provider = MeterProvider()
    try:
        with pytest.raises(ValueError, match="telemetry=False") as raised:
            CoalescingTransport(telemetry=False, meter_provider=provider)
        assert "meter_provider" in str(raised.value)
    finally:
        provider.shutdown()
