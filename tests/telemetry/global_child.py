"""Run by test_global_provider in a process of its own: the global MeterProvider is
process state, set once, which no test may leave behind for the others.

``python -m tests.telemetry.global_child SCENARIO`` prints one JSON line of figures.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.server import LocalServer

from ..upstream import Upstream
from .conftest import Readings


def figures(transport: CoalescingTransport, reader: InMemoryMetricReader | None) -> dict[str, Any]:
    recorder = transport._counters.recorder
    result: dict[str, Any] = {
        "stats_requests": transport.stats().requests,
        "live": recorder.telemetry is not None,
        "probing": recorder.probe is not None,
    }
    if reader is not None:
        readings = Readings(reader)
        result["requests"] = readings.sum("httpx_coalesce.requests")
        result["upstream_calls"] = readings.sum("httpx_coalesce.upstream_calls")
        result["flights_observed"] = "httpx_coalesce.flights.active" in readings.points
    return result


def main(scenario: str) -> None:
    upstream = Upstream()
    with LocalServer(upstream.app) as server:
        reader: InMemoryMetricReader | None = None
        if scenario == "set_before":
            reader = InMemoryMetricReader()
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        transport = CoalescingTransport()
        with httpx.Client(transport=transport, base_url=server.url) as client:
            client.get("/echo?n=0")
            if scenario == "set_after":
                # Set after the transport was built and used: what follows is recorded.
                reader = InMemoryMetricReader()
                metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            client.get("/echo?n=1")
            client.get("/echo?n=2", headers={"x-coalesce": "off"})
        print(json.dumps(figures(transport, reader)))


if __name__ == "__main__":
    main(sys.argv[1])
