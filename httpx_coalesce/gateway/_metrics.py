"""``GET /metrics``: the transport's OpenTelemetry instruments in the Prometheus text format.

The gateway gives its transport a MeterProvider of its own, read by OpenTelemetry's
Prometheus exporter into a registry of its own (the global ones stay the user's), so
``/metrics`` shows exactly the instruments docs/metrics.md lists,
under their Prometheus names (``httpx_coalesce.requests`` with its
``httpx_coalesce.outcome`` becomes ``httpx_coalesce_requests_total{httpx_coalesce_outcome=...}``).
This is the only module of the gateway that knows how metrics are produced.

With several workers, each answers for itself: a scrape sees the worker it reached,
named by ``httpx_coalesce_gateway_worker{pid}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _Worker(Collector):
    def collect(self) -> Iterator[Metric]:
        worker = GaugeMetricFamily(
            "httpx_coalesce_gateway_worker", "The gateway process that answered this scrape.", labels=["pid"]
        )
        worker.add_metric([str(os.getpid())], 1)
        yield worker


def _no_exemplars() -> dict[str, Any]:
    """Exemplars off: the Prometheus text format has no place for them, and the SDK's
    default filter looks up the current span for every measurement to decide whether to
    keep one. (SDKs before exemplars, 1.27, have neither the filter nor the cost.)"""
    try:
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
    except ImportError:  # pragma: no cover - opentelemetry-sdk < 1.28
        return {}
    return {"exemplar_filter": AlwaysOffExemplarFilter()}


class Metrics:
    """The metrics of one gateway process: hand ``meter_provider`` to its transport."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        reader = PrometheusMetricReader(registry=self._registry, disable_target_info=True)
        self.meter_provider = MeterProvider(metric_readers=[reader], **_no_exemplars())
        self._registry.register(_Worker())

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def close(self) -> None:
        self.meter_provider.shutdown()
