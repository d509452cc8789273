"""What exact duplicate-key detection costs the key, beside the colon count it replaced.

The key canonicalises a JSON body (orjson, sorted keys) and must key a body with a
duplicate key by its bytes. The earlier guard compared colon counts, which an escaped
colon (``\\u003a``) fooled; the exact one also counts escaped colons, with a regular
expression that runs only when the body holds ``u003`` at all. This times
``KeyRules.canonical_body`` for both, interleaved in one run, per body shape:
``python -m benchmarks.key_duplicates``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from httpx_coalesce import _key
from httpx_coalesce._key import KeyRules

from .stats import percentile


def _bodies() -> dict[str, bytes]:
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise: " + "lorem ipsum " * 70}],
    }
    escaped = {"model": "m", "messages": [{"role": "user", "content": "time 10:30, ratio 3:1 " * 40}]}
    escaped_text = orjson.dumps(escaped).replace(b":3", b"\\u003a3").replace(b":1", b"\\u003a1")
    big = {"input": [f"document {n}: " + "text " * 20 for n in range(800)], "model": "text-embedding-3-small"}
    return {
        "1 KB chat": orjson.dumps(chat),
        "1 KB with escaped colons": escaped_text,
        "100 KB embeddings": orjson.dumps(big),
    }


def _colon_count(body: bytes, canonical_colons: int) -> bool:
    """The earlier guard, kept here to measure beside the exact one."""
    return body.count(b":") != canonical_colons


def _timed(guard: Callable[[bytes, int], bool], rules: KeyRules, body: bytes, calls: int) -> float:
    """µs per canonical_body call with *guard* as the duplicate-key check."""
    saved = _key._has_duplicate_keys
    _key._has_duplicate_keys = guard  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        for _ in range(calls):
            rules.canonical_body(body, b"application/json")
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        _key._has_duplicate_keys = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    rules = KeyRules()
    print(f"{'body':28} {'colon count µs':>15} {'exact µs':>10} {'ratio':>6}")
    for name, body in _bodies().items():
        calls = max(20, args.calls * 1000 // len(body)) if len(body) > 10_000 else args.calls
        timings: dict[str, list[float]] = {"count": [], "exact": []}
        for round_ in range(args.rounds):
            guards = [("count", _colon_count), ("exact", _key._has_duplicate_keys)]
            for label, guard in guards if round_ % 2 else guards[::-1]:  # neither always first
                timings[label].append(_timed(guard, rules, body, calls))
        count, exact = percentile(timings["count"], 0.5), percentile(timings["exact"], 0.5)
        print(f"{name:28} {count:15.2f} {exact:10.2f} {exact / count:6.2f}")


if __name__ == "__main__":
    main()
