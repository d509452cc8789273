"""The Prometheus example of docs/metrics.md (docs/examples/prometheus.py), run as a user would, and
scraped as Prometheus would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import until_sync
from ..support.ports import free_port
from ..upstream import Upstream

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "prometheus.py"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on the page, by name and labels (OpenTelemetry's scope labels left out)."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(httpx.get(url).text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope"))
            samples[(sample.name, labels)] = sample.value
    return samples


@pytest.fixture
def example(upstream: Upstream, base_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    upstream.hold()  # the burst waits at the server until every caller has joined
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--url", f"{base_url}/echo", "--callers", "10", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, process.stdout.readline().strip().rpartition(" ")[2]  # type: ignore[union-attr]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_prometheus_example_serves_the_bursts_figures(
    example: tuple[subprocess.Popen[str], str], upstream: Upstream
) -> None:
    process, url = example
    assert url.endswith("/metrics")
    method = ("http_request_method", "GET")
    server = ("server_address", "127.0.0.1")
    # While the server holds the answer, the page shows the ten callers waiting on one flight.
    until_sync(lambda: scrape(url).get(("httpx_coalesce_waiters_active", frozenset())) == 10)
    assert scrape(url)[("httpx_coalesce_flights_active", frozenset())] == 1
    upstream.gate.set()
    assert "10 requests, 1 upstream calls" in process.stdout.readline()  # type: ignore[union-attr]

    samples = scrape(url)
    requests = "httpx_coalesce_requests_total"
    assert samples[(requests, frozenset({method, server, ("httpx_coalesce_outcome", "led")}))] == 1
    assert samples[(requests, frozenset({method, server, ("httpx_coalesce_outcome", "joined")}))] == 9
    assert samples[("httpx_coalesce_upstream_calls_total", frozenset({method, server}))] == 1
    assert samples[("httpx_coalesce_flight_callers_sum", frozenset())] == 10
    assert samples[("httpx_coalesce_bytes_saved_bytes_total", frozenset())] > 0
    assert samples[("httpx_coalesce_tokens_saved_total", frozenset({("gen_ai_token_type", "output")}))] == 45
    assert samples[("httpx_coalesce_waiters_active", frozenset())] == 0
    assert upstream.hits["/echo"] == 1
