"""httpx-coalesce's metrics on a Prometheus endpoint, through OpenTelemetry.

    pip install "httpx-coalesce[otel]" opentelemetry-sdk opentelemetry-exporter-prometheus
    python docs/examples/prometheus.py                 # then: curl http://127.0.0.1:9464/metrics

It sends a burst of identical requests (by default to httpbin.org, which answers after
a second, so they overlap), prints what ``stats()`` says, and serves the same figures
to Prometheus until you stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading

import httpx
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from httpx_coalesce import CoalescingTransport


async def burst(url: str, callers: int) -> CoalescingTransport:
    transport = CoalescingTransport()
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        await asyncio.gather(*(client.get(url) for _ in range(callers)))
    return transport


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="https://httpbin.org/delay/1", help="what the burst asks for")
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--port", type=int, default=9464, help="where Prometheus scrapes")
    options = parser.parse_args()

    # The exporter is a metric reader that answers Prometheus' scrapes from
    # prometheus_client's registry; the HTTP server is prometheus_client's own.
    start_http_server(options.port, addr="127.0.0.1")
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    print(f"metrics at http://127.0.0.1:{options.port}/metrics", flush=True)

    transport = asyncio.run(burst(options.url, options.callers))
    stats = transport.stats()
    print(f"{stats.requests} requests, {stats.upstream_calls} upstream calls; Ctrl-C to stop", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()  # prometheus_client serves scrapes from its own thread


if __name__ == "__main__":
    main()
