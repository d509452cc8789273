"""``GET /metrics``: the transport's counters in the Prometheus text format.

For now the figures come from ``transport.stats()``, named after the OpenTelemetry
instruments of the observability issue (``httpx_coalesce.requests`` with its
``outcome`` becomes ``httpx_coalesce_requests_total{outcome=...}``), so a dashboard
built on them keeps working when this module switches to those instruments. This is the
only module that knows how metrics are produced.

With several workers, each answers for itself: a scrape sees the worker it reached.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._stats import CoalesceStats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], CoalesceStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        requests = CounterMetricFamily(
            "httpx_coalesce_requests",
            "Requests the gateway's transport handled, by outcome.",
            labels=["outcome", "bypass_reason"],
        )
        # Every request is counted once, with its final outcome: what did not join, come
        # from the window or pass through led its flight (with Redis, perhaps by
        # following another process's call).
        led = stats.requests - stats.coalesced - stats.window_hits - stats.bypassed_total
        requests.add_metric(["led", ""], max(led, 0))
        requests.add_metric(["joined", ""], stats.coalesced)
        requests.add_metric(["window", ""], stats.window_hits)
        for reason, count in sorted(stats.bypassed.items()):
            requests.add_metric(["bypassed", reason], count)
        yield requests
        yield CounterMetricFamily(
            "httpx_coalesce_upstream_calls",
            "Requests that reached the upstream, pass-through included.",
            value=stats.upstream_calls,
        )
        yield CounterMetricFamily(
            "httpx_coalesce_bytes_saved", "Response bytes not fetched again.", value=stats.bytes_saved
        )
        tokens = CounterMetricFamily(
            "httpx_coalesce_tokens_saved", "LLM tokens not paid for again, by type.", labels=["type"]
        )
        for kind, count in sorted(stats.tokens_saved_by_type.items()):
            tokens.add_metric([kind], count)
        yield tokens
        yield CounterMetricFamily(
            "httpx_coalesce_flights_cancelled",
            "Flights whose callers all left before the upstream call ended.",
            value=stats.cancelled_flights,
        )
        yield CounterMetricFamily(
            "httpx_coalesce_backend_errors",
            "Redis troubles that fell back to local coalescing.",
            value=stats.redis_errors,
        )
        yield GaugeMetricFamily(
            "httpx_coalesce_flights_active", "Flights in flight now.", value=stats.in_flight
        )
        yield GaugeMetricFamily(
            "httpx_coalesce_waiters_active", "Callers attached to flights now.", value=stats.waiters
        )
        # Which worker answered this scrape: with --workers, each answers for itself.
        worker = GaugeMetricFamily(
            "httpx_coalesce_gateway_worker", "The process that answered.", labels=["pid"]
        )
        worker.add_metric([str(os.getpid())], 1)
        yield worker


class Metrics:
    """The registry of one gateway process."""

    def __init__(self, stats: Callable[[], CoalesceStats]) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_StatsCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self._registry)
