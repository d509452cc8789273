"""Summaries of repeated measurements: medians with their spread, and percentiles.

Every figure the benchmarks publish is a median over alternating rounds, shown with the
spread of the rounds (min-max), so one noisy round on a shared machine shows as spread
instead of moving the headline.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Spread", "percentile", "ratios", "spread"]


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of some rounds, with the lowest, highest and quartiles."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values to summarise")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Spread(
        median=statistics.median(ordered),
        low=ordered[0],
        high=ordered[-1],
        q1=q1,
        q3=q3,
        n=len(ordered),
    )


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Per-round ratios, paired: round r of one contender over round r of the reference.

    Pairing cancels what a round shares (a burst of load from another process on the
    machine hits both contenders of the round), which a ratio of medians would not.
    """
    if len(numerators) != len(denominators):
        raise ValueError("ratios need paired rounds")
    return spread([a / b if b > 0 else float("inf") for a, b in zip(numerators, denominators, strict=True)])


def percentile(values: Sequence[float], fraction: float) -> float:
    """The *fraction* percentile (0.5, 0.99) by the nearest-rank method: a value that
    occurred, never one interpolated between two callers."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
