"""OpenTelemetry's SDK, in memory: a MeterProvider per test, and its readings.

Every test passes its own provider (``meter_provider=``): the global one is process
state that would leak from test to test, so the global path is tested in subprocesses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, Metric, NumberDataPoint

from httpx_coalesce import CoalesceStats, CoalescingTransport

from ..conftest import until_sync
from ..support.choreography import overlapping
from ..upstream import Upstream


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


async def burst(
    client: Any,
    transport: CoalescingTransport,
    upstream: Upstream,
    count: int,
    while_waiting: Callable[[], None] | None = None,
    **kw: Any,
) -> list[Any]:
    """*count* identical requests, all joined before the server answers; bodies read.

    *while_waiting* runs while they all wait on the server.
    """

    async def one() -> Any:
        response = await client.request(**kw)
        await response.aread()
        return response

    return await overlapping(upstream, transport, [one] * count, while_waiting=while_waiting)


def burst_sync(
    client: Any, transport: CoalescingTransport, upstream: Upstream, count: int, **kw: Any
) -> None:
    """The same from *count* threads of a sync client."""
    upstream.hold()
    threads = [threading.Thread(target=lambda: client.request(**kw).read()) for _ in range(count)]
    for thread in threads:
        thread.start()
    until_sync(lambda: transport.stats().waiters == count)
    upstream.gate.set()
    for thread in threads:
        thread.join()


@dataclass(frozen=True)
class Point:
    attributes: Mapping[str, Any]
    value: float
    count: int = 0  # histograms: how many recordings


class Readings:
    """One collection of the reader, by instrument name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: dict[str, list[Point]] = {}
        self.metrics: dict[str, Metric] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.metrics[metric.name] = metric
                    points = self.points.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, HistogramDataPoint):
                            points.append(Point(attributes, point.sum, point.count))
                        else:
                            assert isinstance(point, NumberDataPoint)
                            points.append(Point(attributes, point.value))

    def sum(self, name: str, attributes: Mapping[str, Any] | None = None) -> float:
        """The instrument's total over the points whose attributes include *attributes*."""
        wanted = dict(attributes or {})
        return sum(
            point.value
            for point in self.points.get(name, [])
            if all(point.attributes.get(key) == value for key, value in wanted.items())
        )

    def histogram(self, name: str) -> tuple[int, float]:
        """(recordings, their sum) of a histogram."""
        points = self.points.get(name, [])
        return sum(point.count for point in points), sum(point.value for point in points)

    def attribute_values(self) -> list[str]:
        return [
            str(value) for points in self.points.values() for p in points for value in p.attributes.values()
        ]


def outcomes(readings: Readings) -> dict[str, float]:
    """``httpx_coalesce.requests`` by outcome, zeros left out."""
    result: dict[str, float] = {}
    for point in readings.points.get("httpx_coalesce.requests", []):
        outcome = str(point.attributes["httpx_coalesce.outcome"])
        result[outcome] = result.get(outcome, 0) + point.value
    return {outcome: value for outcome, value in result.items() if value}


def assert_agrees(stats: CoalesceStats, readings: Readings) -> None:
    """What stats() says and what the metrics say are the same figures."""
    assert readings.sum("httpx_coalesce.requests") == stats.requests
    assert readings.sum("httpx_coalesce.requests", {"httpx_coalesce.outcome": "window"}) == stats.window_hits
    for reason, count in stats.bypassed.items():
        assert readings.sum("httpx_coalesce.requests", {"httpx_coalesce.bypass_reason": reason}) == count
    assert (
        readings.sum("httpx_coalesce.requests", {"httpx_coalesce.outcome": "bypassed"})
        == stats.bypassed_total
    )
    assert readings.sum("httpx_coalesce.upstream_calls") == stats.upstream_calls
    assert readings.sum("httpx_coalesce.bytes_saved") == stats.bytes_saved
    assert readings.sum("httpx_coalesce.tokens_saved") == stats.tokens_saved
    for kind, count in stats.tokens_saved_by_type.items():
        assert readings.sum("httpx_coalesce.tokens_saved", {"gen_ai.token.type": kind}) == count
    assert readings.sum("httpx_coalesce.backend.errors") == stats.redis_errors
    assert readings.sum("httpx_coalesce.flights.active") == stats.in_flight
    assert readings.sum("httpx_coalesce.waiters.active") == stats.waiters
