"""Benchmarks of httpx-coalesce: ``python -m benchmarks`` (``--quick`` for a smoke run).

Writes ``benchmarks/results/results.{json,md}`` and ``scaling.png``, and fills the
table of docs/benchmarks.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.

Modules, one concept each: ``server`` (the loopback upstream, in its own process),
``inprocess`` (upstreams without a network), ``contenders`` (plain httpx, function-level
coalescers, ours; the hook for ``bench_redis``), ``workloads`` (who calls with what),
``drive`` and ``streaming`` (running callers and measuring them), ``rounds``
(alternation), ``stats`` and ``summary`` (medians, spreads, ratios), ``overhead``
(the target figures about our own cost), ``hotspots`` (profile of that cost),
``report`` and ``plot`` (the outputs), ``runner`` (one run, start to finish).
"""
