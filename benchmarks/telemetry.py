"""What the OpenTelemetry metrics cost on the path that does not coalesce.

``python -m benchmarks.telemetry [--quick] [--repeat N]``

Unique keys (1 KB JSON bodies), in process (an inner transport that answers at once,
so only client and transport costs are left), one request at a time and 16 at a time,
httpx. Four transports, run in alternating rounds in one process:

* ``off``: what a user without the ``otel`` extra runs (no recorder, no span check);
* ``off again``: the same, a second time: the spread of two identical contenders is
  the noise floor of this machine at this moment;
* ``no provider``: the extra installed but no MeterProvider set (the API's proxy): the
  transport probes for one once per request, and looks at the caller's span;
* ``sdk``: a real SDK MeterProvider with a reader, every instrument recording.

Each figure is the median of per-round ratios against ``off`` in the same round, with
the min-max spread. Targets: ``sdk`` at most 1.05x; ``no provider`` within the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from httpx_coalesce import CoalescingTransport

from .inprocess import InProcessUpstream
from .overhead import _send_all
from .rounds import alternate
from .stats import ratios, spread
from .workloads import chat_payload

TARGET_SDK = 1.05
_URL = "http://upstream.bench/v1/chat/completions"
RESULTS = Path(__file__).parent / "results" / "telemetry.json"


def _transport(kind: str) -> CoalescingTransport:
    if kind == "sdk":
        return CoalescingTransport(
            InProcessUpstream(httpx), meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()])
        )
    if kind.startswith("off"):
        # The off switch: as without opentelemetry-api, nothing to probe, no span to look at.
        return CoalescingTransport(InProcessUpstream(httpx), telemetry=False)
    transport = CoalescingTransport(InProcessUpstream(httpx))
    assert transport._counters.recorder.probe is not None, "a global MeterProvider is set"
    return transport


async def _measure(requests: int, rounds: int, concurrency: int) -> dict[str, Any]:
    kinds = ["off", "off again", "no provider", "sdk"]
    transports = {kind: _transport(kind) for kind in kinds}
    clients = {kind: httpx.AsyncClient(transport=transports[kind]) for kind in kinds}
    serial = iter(range(1 << 30))

    def bodies(tag: str, count: int) -> list[bytes]:
        return [orjson.dumps(chat_payload(f"{tag}-{next(serial)}-{i}", 1024)) for i in range(count)]

    try:
        for client in clients.values():  # warm: lazily built classes, first-call caches
            await _send_all(client, _URL, bodies("warm", 200), concurrency)

        async def one(kind: str) -> float:
            prepared = bodies(kind, requests)
            start = time.perf_counter()
            await _send_all(clients[kind], _URL, prepared, concurrency)
            return time.perf_counter() - start

        runs = await alternate(kinds, rounds, one)
    finally:
        for client in clients.values():
            await client.aclose()
    for kind, transport in transports.items():
        stats = transport.stats()
        # Unique keys: nothing may have been shared, or this measures something else.
        assert stats.coalesced == 0, (kind, stats)
    base = runs["off"]
    return {
        "us_per_request_off": spread([wall / requests * 1e6 for wall in base]).median,
        "ratios": {kind: ratios(runs[kind], base).as_dict() for kind in kinds[1:]},
        "requests_per_round": requests,
        "rounds": rounds,
        "concurrency": concurrency,
    }


def _line(name: str, figure: dict[str, Any]) -> str:
    parts = [f"{name:<18} off {figure['us_per_request_off']:6.1f} µs/request"]
    for kind, ratio in figure["ratios"].items():
        parts.append(f"{kind} {ratio['median']:.3f}x ({ratio['low']:.3f}-{ratio['high']:.3f})")
    return " · ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole comparison this many times")
    options = parser.parse_args(argv)
    requests, rounds = (300, 3) if options.quick else (2000, 12)
    results: list[dict[str, Any]] = []
    for repeat in range(options.repeat):
        for mode, concurrency in (("sequential", 1), ("concurrent", 16)):
            figure = asyncio.run(_measure(requests, rounds, concurrency))
            figure["mode"] = mode
            figure["repeat"] = repeat
            results.append(figure)
            print(_line(f"{mode} #{repeat + 1}", figure), flush=True)
    if not options.quick:
        RESULTS.write_text(json.dumps({"target_sdk": TARGET_SDK, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
