"""Counters of what the transport did, and their snapshot."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

__all__ = ["CoalesceStats", "Counters"]


@dataclass(frozen=True)
class CoalesceStats:
    """A snapshot of :meth:`CoalescingTransport.stats`."""

    #: Requests the transport saw.
    requests: int = 0
    #: Requests that reached the inner transport: what the server saw from this transport,
    #: a flight's one call and every request that passed through alike.
    upstream_calls: int = 0
    #: Responses handed to a caller that did not lead the flight.
    coalesced: int = 0
    #: Responses served from the window after their flight had finished.
    window_hits: int = 0
    #: Requests sent straight through, by reason.
    bypassed: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Flights whose callers all left before the upstream call ended.
    cancelled_flights: int = 0
    #: Flights in flight now, and the callers attached to them.
    in_flight: int = 0
    waiters: int = 0
    #: Response body bytes that were not fetched again because a caller shared a flight.
    bytes_saved: int = 0
    #: LLM tokens (from the ``usage`` block) not paid for again.
    tokens_saved: int = 0
    #: With a Redis backend: flights this process led for the fleet, flights it followed
    #: from another process, and Redis troubles that fell back to local coalescing.
    redis_led: int = 0
    redis_followed: int = 0
    redis_errors: int = 0

    @property
    def bypassed_total(self) -> int:
        return sum(self.bypassed.values())


_FIELDS = frozenset(field.name for field in fields(CoalesceStats)) - {"bypassed", "in_flight", "waiters"}


class Counters:
    """Thread-safe counters; sync threads and event loops update the same ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bypassed: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def bypass(self, reason: str, new_request: bool = True) -> None:
        with self._lock:
            if new_request:
                self._counts["requests"] += 1
            self._bypassed[reason] += 1

    def snapshot(self, in_flight: int, waiters: int) -> CoalesceStats:
        with self._lock:
            counts = dict(self._counts)
            bypassed = MappingProxyType(dict(self._bypassed))
        # Only the fields a snapshot has: a backend counting under a name of its own
        # must not make stats() raise in the middle of a service.
        known = {name: value for name, value in counts.items() if name in _FIELDS}
        return CoalesceStats(bypassed=bypassed, in_flight=in_flight, waiters=waiters, **known)
