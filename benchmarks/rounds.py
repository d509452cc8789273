"""Alternating rounds: every contender once per round, in a rotated order.

Contenders of one comparison run in the same process, one after the other within a
round, and the order rotates from round to round, so a slow spell of the shared
machine, or a warm cache left by the previous contender, does not always land on the
same one.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["alternate", "rotated"]

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


async def alternate(
    names: Sequence[str], rounds: int, run_one: Callable[[str], Awaitable[T]]
) -> dict[str, list[T]]:
    """``run_one(name)`` for every name, *rounds* times, rotating the order; results by
    name, in round order (so round r of one name pairs with round r of another)."""
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            # Garbage left by the previous contender is collected now, not on its successor's clock.
            gc.collect()
            results[name].append(await run_one(name))
    return results
