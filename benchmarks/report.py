"""Writing the results: JSON for machines, Markdown for people, the table of docs/benchmarks.md.

Every comparison is printed as a ratio to ours (CoalescingTransport with httpx) in the
same round: the median over rounds, with the lowest and highest round in brackets.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import plot
from .contenders import REFERENCE
from .summary import ratio_of

__all__ = ["headline_table", "markdown", "update_readme", "write_all"]

START_MARKER = "<!-- bench:start -->"
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
#: Marks a row that qualifies the row above it.
INDENT = "\N{RIGHTWARDS ARROW WITH HOOK} "
END_MARKER = "<!-- bench:end -->"

_SECONDS = {"wall": "wall", "cpu": "CPU", "p50": "p50", "p99": "p99"}


def write_all(results: dict[str, Any], out: Path, readme: Path | None) -> list[Path]:
    """results.json, results.md, scaling.png (if matplotlib is there), and the benchmarks page."""
    out.mkdir(parents=True, exist_ok=True)
    results.setdefault("meta", {})["generated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    written = []
    png = out / "scaling.png"
    missing = plot.draw_scaling(results, png)
    if missing is None:
        written.append(png)
    else:
        results.setdefault("notes", []).append(missing)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(_finite(results), indent=2, allow_nan=False) + "\n")
    written.append(json_path)
    md_path = out / "results.md"
    md_path.write_text(markdown(results))
    written.append(md_path)
    if readme is not None and update_readme(readme, headline_table(results)):
        written.append(readme)
    return written


def _finite(value: Any) -> Any:
    """*value* with NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# -- formatting ----------------------------------------------------------------------------


def ratio_text(summary: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not summary:
        return DASH
    median, low, high = summary["median"], summary["low"], summary["high"]
    if not all(math.isfinite(v) for v in (median, low, high)):
        return DASH
    if summary.get("n", 1) == 1 or low == high:
        return f"{median:.{digits}f}{TIMES}"
    return f"{median:.{digits}f}{TIMES} ({low:.{digits}f}{DASH}{high:.{digits}f})"


def calls_text(calls: Sequence[int]) -> str:
    if not calls:
        return DASH
    low, high = min(calls), max(calls)
    return f"{low:,}" if low == high else f"{low:,}{DASH}{high:,}"


def bytes_text(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def seconds_text(value: float) -> str:
    if abs(value) >= 1:
        return f"{value:.2f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _yes(met: bool | None) -> str:
    return DASH if met is None else ("**yes**" if met else "**no**")


# -- the target figures -------------------------------------------------------------------------


def _floor_row(figure: Mapping[str, Any]) -> list[list[str]]:
    """The same figure for the floor (benchmarks/floor.py): can any design meet it?"""
    floor = figure.get("floor_wall_ratio")
    if floor is None:
        return []
    reachable = floor["median"] <= figure["target"]
    return [
        [
            f"{INDENT}the floor, same run: the least any coalescing transport does",
            f"≤ {figure['target']:.2f}{TIMES}",
            f"{ratio_text(floor)} wall",
            "reachable" if reachable else "**below the floor**",
        ]
    ]


def _target_rows(results: Mapping[str, Any]) -> list[list[str]]:
    targets = results.get("targets", {})
    rows: list[list[str]] = []
    for key, figure in targets.get("overhead", {}).items():
        where, library, mode = key.split("/")
        place = "in process (inner transport answers at once)" if where == "in-process" else "loopback server"
        concurrency = "one at a time" if mode == "sequential" else "16 at a time"
        measured = (
            f"{ratio_text(figure['wall_ratio'])} wall, {ratio_text(figure['cpu_ratio'])} CPU; "
            f"+{figure['added_us_per_request']:.0f} µs on {figure['base_us_per_request']:.0f} µs/request"
        )
        rows.append(
            [
                f"Added cost, no coalescing: unique keys, 1 KB JSON, {place}, {library}, {concurrency}",
                f"≤ {figure['target']:.2f}{TIMES}",
                measured,
                _yes(figure["met"]),
            ]
        )
        rows += _floor_row(figure)
    for library, figure in targets.get("stampede", {}).items():
        requests = f"{figure['requests']:,}"
        rows.append(
            [
                f"{requests} concurrent identical requests, in process, {library}: upstream calls",
                "exactly 1",
                calls_text(figure["upstream_calls"]),
                _yes(figure["upstream_calls"] == [1]),
            ]
        )
        rows.append(
            [
                f"{requests} identical through ours (upstream answers after "
                f"{figure['delay_s'] * 1e3:.0f} ms) vs {requests} uncoalesced to an instant upstream, "
                f"{library}: wall",
                f"≤ {figure['target']:.1f}{TIMES}",
                f"{ratio_text(figure['wall_ratio'])} wall, {ratio_text(figure['cpu_ratio'])} CPU "
                f"({figure['ours_us_per_caller']:.0f} vs {figure['instant_us_per_request']:.0f} "
                "µs per caller)",
                _yes(figure["wall_ratio"]["median"] <= figure["target"]),
            ]
        )
        rows += _floor_row(figure)
    sse = _workload(results, "sse")
    if sse is not None:
        small = sse.get("params", {}).get("small_fanout", {})
        for name, entry in sse["contenders"].items():
            if not name.startswith("ours"):
                continue
            gaps = small.get("follower_minus_leader_p50", {}).get(name)
            if gaps:
                middle = statistics.median(gaps)
                rows.append(
                    [
                        f"SSE, {small['callers']:,} callers of one stream, {entry['label']}: "
                        "a follower's first byte after the leader's (median follower, "
                        f"median of {len(gaps)} rounds)",
                        "≤ 1 ms",
                        f"{seconds_text(middle)} ({seconds_text(min(gaps))}{DASH}{seconds_text(max(gaps))})",
                        _yes(middle <= 1e-3),
                    ]
                )
            extra = entry.get("extra", {})
            gap = extra.get("follower_minus_leader_p50")
            if gap:
                rows.append(
                    [
                        f"SSE, {sse['callers']:,} callers of one stream, {entry['label']}: "
                        "a follower's first byte "
                        "after the leader's (median follower)",
                        "≤ 1 ms",
                        f"{seconds_text(gap['median'])} "
                        f"({seconds_text(gap['low'])}{DASH}{seconds_text(gap['high'])})",
                        _yes(gap["median"] <= 1e-3),
                    ]
                )
            ratio = entry.get("memory_per_stream_size")
            if ratio is not None:
                rows.append(
                    [
                        f"SSE, {sse['callers']:,} callers, {entry['label']}: "
                        "peak memory above idle ÷ stream size",
                        f"< 3{TIMES}",
                        f"{ratio:.1f}{TIMES} ({bytes_text(entry['peak_memory_bytes'])} for a "
                        f"{bytes_text(extra.get('stream_bytes', {}).get('median', 0))} stream)"
                        + _split(entry),
                        _yes(ratio < 3),
                    ]
                )
    return rows


def _per_delivery(entry: Mapping[str, Any], callers: int, events: int | None) -> str:
    """Client CPU per caller per event: the price of handing one event to one caller."""
    cpu = entry.get("median", {}).get("cpu")
    if not cpu or not events:
        return DASH
    return f"{cpu['median'] / (callers * events) * 1e6:.1f} µs"


def _split(entry: Mapping[str, Any]) -> str:
    """The peak split into what every caller holds and what the stream's data adds."""
    per_caller = entry.get("memory_per_caller_bytes")
    data = entry.get("memory_data_per_stream_size")
    if per_caller is None or data is None:
        return ""
    return f": {bytes_text(per_caller)} per caller whatever the stream, plus {data:.1f}{TIMES} the stream"


def _workload(results: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for workload in results.get("workloads", []):
        if workload["name"] == name:
            found: dict[str, Any] = workload
            return found
    return None


# -- the headline table (README) -------------------------------------------------------------------

_HEADLINE = [
    ("identical-1000", "1,000 identical calls"),
    ("identical-10000", "10,000 identical calls"),
    ("mixed", "90 % duplicates"),
    ("unique-1kb", "unique keys (overhead)"),
]


def headline_table(results: Mapping[str, Any], link: bool = True) -> str:
    """Contenders by main workloads: upstream calls, and wall time as a ratio to ours."""
    workloads = [(name, title, _workload(results, name)) for name, title in _HEADLINE]
    present = [(name, title, w) for name, title, w in workloads if w is not None]
    blob = _workload(results, "blob-1mb")
    sse = _workload(results, "sse")
    names: list[str] = []
    labels: dict[str, str] = {}
    for workload in [*(w for _, _, w in present), blob, sse]:
        if workload is None:
            continue
        for name, entry in workload["contenders"].items():
            if name not in labels:
                names.append(name)
                labels[name] = entry["label"]
    header = ["contender", *(f"{title}: upstream calls · wall vs ours" for _, title, _ in present)]
    if blob is not None:
        header.append(f"1 MB to {blob['callers']:,} callers: peak memory vs ours")
    if sse is not None:
        header.append("SSE fan-out: first byte, median caller")
    rows = []
    for name in names:
        row = [labels[name] + (" (reference)" if name == REFERENCE else "")]
        for _, _, workload in present:
            entry = workload["contenders"].get(name)
            if entry is None:
                row.append("not run")
                continue
            wall = ratio_of(entry, "wall")
            row.append(f"{calls_text(entry['upstream_calls'])} · {ratio_text(wall, 2) if wall else DASH}")
        if blob is not None:
            entry = blob["contenders"].get(name)
            memory = entry.get("memory_ratio") if entry else None
            row.append(f"{memory:.2f}{TIMES}" if memory is not None else "not run")
        if sse is not None:
            entry = sse["contenders"].get(name)
            row.append(_first_byte(entry) if entry else "not run")
        rows.append(row)
    meta = results.get("meta", {})
    lines = _table(header, rows)
    lines.append("")
    lines.append(
        f"Ratios: the contender's median over alternating rounds ÷ ours (CoalescingTransport + httpx) in the "
        f"same round, min{DASH}max in brackets; server latency {meta.get('latency_s', 0) * 1e3:.0f} ms. "
        f"{meta.get('mode', '')} run of {meta.get('generated', '')[:10]}, {meta.get('cpus')} CPUs."
        + (" Details: [benchmarks/results/results.md](../benchmarks/results/results.md)." if link else "")
    )
    return "\n".join(lines)


def _first_byte(entry: Mapping[str, Any]) -> str:
    extra = entry.get("extra", {})
    follower = extra.get("follower_first_lag_p50")
    if follower is None:
        return DASH
    return f"{seconds_text(follower['median'])} after the upstream sent it"


def update_readme(readme: Path, table: str) -> bool:
    """Replace what is between the bench markers; False (untouched) without both markers."""
    if not readme.exists():
        return False
    text = readme.read_text()
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < start:
        return False
    updated = text[: start + len(START_MARKER)] + "\n" + table + "\n" + text[end:]
    if updated != text:
        readme.write_text(updated)
    return True


# -- results.md -----------------------------------------------------------------------------------


def markdown(results: Mapping[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = [
        "# Benchmark results",
        "",
        f"`python -m benchmarks{' --quick' if meta.get('mode') == 'quick' else ''}`, "
        f"{meta.get('mode')} run, {meta.get('generated')}, {meta.get('duration_s')} s. "
        f"Commit {meta.get('commit')}{' with httpx_coalesce/ modified' if meta.get('src_modified') else ''}; "
        f"Python {meta.get('python')}, {meta.get('platform')}, {meta.get('cpus')} CPUs; load average "
        f"{_load(meta.get('load_average_at_start'))} at the start, "
        f"{_load(meta.get('load_average_at_end'))} at "
        "the end (other work on the machine shows up as spread).",
        "",
        "How to read: every time-like figure of a contender is its median over alternating rounds divided by "
        "ours (CoalescingTransport + httpx) in the same round, with the lowest and highest round in "
        f"brackets; above 1{TIMES} the contender took longer (or held more) than ours. "
        "Upstream calls are the "
        "loopback server's own count. The server runs in a separate process and answers after "
        f"{meta.get('latency_s', 0) * 1e3:.0f} ms; CPU is the client process's time; memory is the peak "
        "traced by tracemalloc above idle, in a separate pass.",
        "",
    ]
    if meta.get("mode") == "quick":
        lines += [
            "**Quick run: sizes are smaller than the targets are stated for; do not read targets off it.**",
            "",
        ]
    lines += ["## Targets", ""]
    lines += _table(["figure", "target", "measured", "met"], _target_rows(results))
    lines += ["", "## Headline", "", headline_table(results, link=False), ""]
    sse = _workload(results, "sse")
    if sse is not None:
        lines += _stream_section(sse)
    lines += ["## Workload by workload", ""]
    for workload in results.get("workloads", []):
        if workload["kind"] == "post":
            lines += _workload_section(workload)
    lines += _beaten_section(results)
    if "hotspots" in results:
        lines += _hotspot_section(results["hotspots"], results.get("targets", {}).get("overhead", {}))
    notes = results.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _load(values: Sequence[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _reference_line(workload: Mapping[str, Any]) -> str:
    reference = workload["contenders"].get(REFERENCE, {}).get("median")
    if not reference:
        return ""
    parts = [f"{label} {seconds_text(reference[key]['median'])}" for key, label in _SECONDS.items()]
    return f"Ours (the 1.00{TIMES} reference), medians: {', '.join(parts)}."


def _workload_section(workload: Mapping[str, Any]) -> list[str]:
    memory = any("peak_memory_bytes" in entry for entry in workload["contenders"].values())
    header = ["contender", "upstream calls", "wall", "CPU", "p50 latency", "p99 latency"]
    if memory:
        header.append("peak memory above idle")
    header.append("errors")
    rows = []
    for entry in workload["contenders"].values():
        row = [
            entry["label"],
            calls_text(entry["upstream_calls"]),
            *(
                ratio_text(ratio_of(entry, measure)) if "ratio" in entry else "not timed"
                for measure in _SECONDS
            ),
        ]
        if memory:
            peak = entry.get("peak_memory_bytes")
            ratio = entry.get("memory_ratio")
            row.append(
                DASH
                if peak is None
                else f"{bytes_text(peak)} ({ratio:.2f}{TIMES})"
                if ratio
                else bytes_text(peak)
            )
        row.append(str(entry["errors"]))
        rows.append(row)
    lines = [
        f"### {workload['title']}",
        "",
        f"`{workload['name']}`: {workload['rounds']} rounds; a perfect coalescer makes "
        f"{workload['ideal_upstream']:,} upstream call{'s' if workload['ideal_upstream'] != 1 else ''}.",
        "",
    ]
    lines += _table(header, rows)
    reference = _reference_line(workload)
    if reference:
        lines += ["", reference]
    for name, why in workload.get("skipped", {}).items():
        lines += ["", f"- {name}: {why}"]
    return [*lines, ""]


def _stream_section(sse: Mapping[str, Any]) -> list[str]:
    params = sse.get("params", {})
    live = params.get("streams_live", {})
    header = [
        "contender",
        "live fan-out",
        "upstream calls",
        "first byte: leader",
        "first byte: followers p50 / p99",
        "follower - leader (p50)",
        "upstream's last byte → last caller's",
        "wall",
        "CPU",
        "client CPU per caller per event",
        "peak memory ÷ stream",
    ]
    rows = []
    for name, entry in sse["contenders"].items():
        extra = entry.get("extra", {})

        def lag(key: str, extra: Mapping[str, Any] = extra) -> str:
            value = extra.get(key)
            return seconds_text(value["median"]) if value else DASH

        per_size = entry.get("memory_per_stream_size")
        rows.append(
            [
                entry["label"],
                "yes" if live.get(name) else "no (whole answer, then shared)",
                calls_text(entry["upstream_calls"]),
                lag("leader_first_lag"),
                f"{lag('follower_first_lag_p50')} / {lag('follower_first_lag_p99')}",
                lag("follower_minus_leader_p50"),
                lag("last_byte_lag"),
                ratio_text(ratio_of(entry, "wall")),
                ratio_text(ratio_of(entry, "cpu")),
                _per_delivery(entry, sse["callers"], params.get("events")),
                f"{per_size:.1f}{TIMES} ({bytes_text(entry['peak_memory_bytes'])})" + _split(entry)
                if per_size is not None
                else DASH,
            ]
        )
    lines = [
        f"## Streaming: {sse['title']}",
        "",
        f"{sse['rounds']} rounds. Headers at once, first event "
        f"{params.get('first_event_after_s', 0) * 1e3:.0f} ms "
        f"later, then {params.get('events')} events {params.get('gap_s', 0) * 1e3:g} ms apart. "
        "First byte: a caller's first byte minus the "
        "server's stamp on the first event (same clock); a function-level contender does not say who led, so "
        "all its callers count as followers. Lags are medians over rounds.",
        "",
    ]
    lines += _table(header, rows)
    for name, why in sse.get("skipped", {}).items():
        lines += ["", f"- {name}: {why}"]
    return [*lines, ""]


def _beaten_section(results: Mapping[str, Any]) -> list[str]:
    """Every workload where a contender's median wall, CPU or memory beats ours by 10 %+."""
    rows = []
    for workload in results.get("workloads", []):
        for name, entry in workload["contenders"].items():
            if name == REFERENCE:
                continue
            for measure, label in (("wall", "wall"), ("cpu", "CPU")):
                ratio = ratio_of(entry, measure)
                if ratio and ratio["median"] < 0.9:
                    rows.append([workload["name"], entry["label"], label, ratio_text(ratio)])
            memory = entry.get("memory_ratio")
            if memory is not None and memory < 0.9:
                rows.append([workload["name"], entry["label"], "peak memory", f"{memory:.2f}{TIMES}"])
    lines = [f"## Where another contender beats ours (median ratio < 0.90{TIMES})", ""]
    if not rows:
        return [*lines, "Nowhere.", ""]
    return [*lines, *_table(["workload", "contender", "measure", "ratio to ours"], rows), ""]


def _hotspot_section(hotspots: Mapping[str, Any], overhead_figures: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    unique = hotspots.get("unique")
    if unique:
        figure = overhead_figures.get(f"in-process/{unique['library']}/sequential")
        scale = (
            f" Unprofiled, this path adds {figure['added_us_per_request']:.0f} µs per request."
            if figure
            else ""
        )
        lines += _profile_lines(
            "Where our overhead goes: unique keys, 1 KB JSON, one at a time, in process",
            f"{unique['requests']:,} sequential requests",
            unique,
            scale,
        )
    followers = hotspots.get("followers")
    if followers:
        lines += _profile_lines(
            "What a follower costs: identical keys, all at once, in process",
            f"{followers['requests']:,} identical concurrent requests (ours: one upstream call; bare: each "
            "answered at once)",
            followers,
            "",
        )
    return lines


def _profile_lines(title: str, what: str, profile: Mapping[str, Any], scale: str) -> list[str]:
    totals = profile["profiled_us_per_request"]
    lines = [
        f"## {title}",
        "",
        f"cProfile over {what}, {profile['library']}: {totals['ours']} µs per request with "
        f"CoalescingTransport, {totals['base']} µs with the bare inner transport (profiled; shares matter "
        f"more than totals).{scale} Regenerate with `python -m benchmarks.hotspots`.",
        "",
        "Own time added per request, by function (ours - bare):",
        "",
    ]
    lines += _table(
        ["function", "added µs/request", "calls/request"],
        (
            [spot["function"], f"{spot['added_us']:.1f}", f"{spot['calls_per_request']:g}"]
            for spot in profile["added"]
        ),
    )
    lines += ["", "Our functions by cumulative time per request (the transport's call tree, top down):", ""]
    lines += _table(
        ["function", "cumulative µs/request"],
        ([spot["function"], f"{spot['ours_cumulative_us']:.1f}"] for spot in profile["ours_cumulative"]),
    )
    return [*lines, ""]
