"""scaling.png: how each contender's cost grows with the number of identical callers.

matplotlib is optional (the ``bench`` extra): without it the PNG is skipped and the
results say so, everything else is written as usual.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["draw_scaling"]


def _series(results: Mapping[str, Any]) -> dict[str, dict[str, list[tuple[int, dict[str, Any]]]]]:
    """label -> measure -> [(callers, median summary)] over the identical-N workloads."""
    series: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for workload in results.get("workloads", []):
        if not workload["name"].startswith("identical-"):
            continue
        for entry in workload["contenders"].values():
            medians = entry.get("median")
            if not medians:
                continue
            per = series.setdefault(entry["label"], {"wall": [], "cpu": [], "upstream": []})
            per["wall"].append((workload["callers"], medians["wall"]))
            per["cpu"].append((workload["callers"], medians["cpu"]))
            calls = entry["upstream_calls"]
            per["upstream"].append(
                (workload["callers"], {"median": max(calls), "low": min(calls), "high": max(calls)})
            )
    return series


def draw_scaling(results: Mapping[str, Any], path: Path) -> str | None:
    """Draw the PNG; a note saying why not, if it could not be drawn."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        message = "scaling.png not drawn: matplotlib is not installed (pip install -e '.[bench]')."
        print(message)
        return message
    matplotlib.use("Agg")  # no display on CI or a server
    pyplot = importlib.import_module("matplotlib.pyplot")
    series = _series(results)
    if not series:
        return "scaling.png not drawn: no identical-N workload in this run."
    figure, axes = pyplot.subplots(1, 3, figsize=(16, 5))
    panels = [
        ("wall", "wall time (s), median, min-max", axes[0]),
        ("cpu", "client CPU time (s), median, min-max", axes[1]),
        ("upstream", "upstream calls", axes[2]),
    ]
    for measure, title, ax in panels:
        # Several contenders share a line (every coalescer makes one upstream call):
        # markers of their own keep each visible.
        for (label, per), marker in zip(sorted(series.items()), itertools.cycle("os^vD*P"), strict=False):
            points = sorted(per[measure], key=lambda point: point[0])
            xs = [x for x, _ in points]
            ys = [summary["median"] for _, summary in points]
            low = [max(summary["median"] - summary["low"], 0) for _, summary in points]
            high = [max(summary["high"] - summary["median"], 0) for _, summary in points]
            ax.errorbar(xs, ys, yerr=[low, high], marker=marker, capsize=3, label=label, alpha=0.85)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent identical callers")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    meta = results.get("meta", {})
    figure.suptitle(
        f"Identical concurrent calls, loopback server answering after "
        f"{meta.get('latency_s', 0) * 1e3:.0f} ms "
        f"({meta.get('mode', '')} run, {meta.get('cpus')} CPUs)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return None
