"""From raw samples to the figures published: medians, spreads, and ratios to ours.

Every time-like figure of a contender is published as a ratio to the reference
contender (``CoalescingTransport`` with httpx) of the same round, never as a bare
time; the reference's own medians are kept in the JSON for context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .contenders import REFERENCE
from .drive import Sample
from .stats import ratios, spread

__all__ = ["WorkloadRuns", "summarise"]

_MEASURES = ("wall", "cpu", "p50", "p99")


@dataclass
class WorkloadRuns:
    """What one workload produced, before summarising."""

    name: str
    title: str
    kind: str
    callers: int
    ideal_upstream: int
    rounds: int
    labels: dict[str, str]
    samples: dict[str, list[Sample]]
    #: One pass under tracemalloc per contender: its sample (peak_memory set).
    memory: dict[str, Sample] = field(default_factory=dict)
    #: The same callers' pass on a one-event stream: what the callers hold whatever the
    #: stream's size (streams only).
    memory_baseline: dict[str, Sample] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _values(samples: list[Sample], measure: str) -> list[float]:
    return [float(getattr(sample, measure)) for sample in samples]


def _contender(
    runs: WorkloadRuns, name: str, reference: list[Sample] | None, reference_memory: Sample | None
) -> dict[str, Any]:
    samples = runs.samples.get(name, [])
    entry: dict[str, Any] = {"label": runs.labels.get(name, name)}
    upstream = [sample.upstream for sample in samples]
    memory = runs.memory.get(name)
    if memory is not None:
        upstream.append(memory.upstream)
    entry["upstream_calls"] = upstream
    entry["errors"] = sum(sample.errors for sample in samples) + (memory.errors if memory else 0)
    if samples:
        entry["rounds"] = len(samples)
        entry["median"] = {measure: spread(_values(samples, measure)).as_dict() for measure in _MEASURES}
        if reference is not None and len(reference) == len(samples):
            entry["ratio"] = {
                measure: ratios(_values(samples, measure), _values(reference, measure)).as_dict()
                for measure in _MEASURES
            }
        extras = sorted({key for sample in samples for key in sample.extra})
        entry["extra"] = {
            key: spread([sample.extra[key] for sample in samples if key in sample.extra]).as_dict()
            for key in extras
        }
    if memory is not None and memory.peak_memory is not None:
        entry["peak_memory_bytes"] = memory.peak_memory
        if reference_memory is not None and reference_memory.peak_memory:
            entry["memory_ratio"] = memory.peak_memory / reference_memory.peak_memory
        stream_bytes = memory.extra.get("stream_bytes")
        if stream_bytes:
            entry["memory_per_stream_size"] = memory.peak_memory / stream_bytes
            baseline = runs.memory_baseline.get(name)
            if baseline is not None and baseline.peak_memory is not None:
                entry["memory_per_caller_bytes"] = baseline.peak_memory / runs.callers
                data = memory.peak_memory - baseline.peak_memory
                entry["memory_data_per_stream_size"] = data / stream_bytes
    return entry


def summarise(runs: WorkloadRuns) -> dict[str, Any]:
    reference = runs.samples.get(REFERENCE)
    reference_memory = runs.memory.get(REFERENCE)
    names = [*runs.samples, *(name for name in runs.memory if name not in runs.samples)]
    return {
        "name": runs.name,
        "title": runs.title,
        "kind": runs.kind,
        "callers": runs.callers,
        "ideal_upstream": runs.ideal_upstream,
        "rounds": runs.rounds,
        "reference": REFERENCE,
        "params": runs.params,
        "contenders": {name: _contender(runs, name, reference, reference_memory) for name in names},
        "skipped": runs.skipped,
    }


def ratio_of(entry: Mapping[str, Any], measure: str) -> dict[str, Any] | None:
    """The ratio summary of *measure* for one contender's entry, if it has one."""
    ratio = entry.get("ratio")
    if not isinstance(ratio, Mapping):
        return None
    found = ratio.get(measure)
    return found if isinstance(found, dict) else None
