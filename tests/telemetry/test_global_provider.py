"""The global MeterProvider: found whenever the application sets it, before or after
the transport is built; while none is set, nothing records. Each case runs in a
process of its own (global_child), since the global provider can be set only once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(scenario: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.global_child", scenario],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def test_a_provider_set_before_the_transport_records_everything() -> None:
    figures = run("set_before")
    assert figures == {
        "stats_requests": 3,
        "live": True,
        "probing": False,
        "requests": 3,
        "upstream_calls": 3,
        "flights_observed": True,
    }


def test_a_provider_set_after_the_transport_was_used_records_from_then_on() -> None:
    figures = run("set_after")
    # The first request went before there was a provider: stats() counts it, the
    # metrics cannot. The next request finds the provider.
    assert figures == {
        "stats_requests": 3,
        "live": True,
        "probing": False,
        "requests": 2,
        "upstream_calls": 2,
        "flights_observed": True,
    }


def test_with_no_provider_nothing_records_and_the_transport_keeps_looking() -> None:
    assert run("never") == {"stats_requests": 3, "live": False, "probing": True}


WITHOUT_OPENTELEMETRY = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import httpx
from httpx_coalesce import CoalescingTransport

transport = CoalescingTransport(httpx.MockTransport(lambda request: httpx.Response(200, json={})))
recorder = transport._counters.recorder
assert (recorder.telemetry, recorder.probe, recorder.note_span) == (None, None, None)
with httpx.Client(transport=transport) as client:
    assert client.get("http://upstream.test/").status_code == 200
assert transport.stats().upstream_calls == 1
try:
    CoalescingTransport(meter_provider=object())
except TypeError as error:
    print(error)
"""


def test_without_opentelemetry_the_transport_works_and_a_provider_is_refused_with_the_fix() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "httpx-coalesce[otel]"' in done.stdout
