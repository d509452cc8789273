"""Counters of what the transport did, and their snapshot."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ._cost import Price, Pricer
from ._telemetry import Recorder
from ._usage import Tokens

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
    #: Response body bytes that were not fetched again because a caller shared a flight
    #: (with a Redis backend, also a flight whose answer came from another process).
    bytes_saved: int = 0
    #: LLM tokens (from the ``usage`` block) not paid for again: the total, and by type
    #: (``input``, ``output``, ``cached_input``; the types add up to the total).
    tokens_saved: int = 0
    tokens_saved_by_type: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: The estimated list price, in USD, of the LLM calls that sharing made unnecessary
    #: (a follower's answer, a window hit, or a flight's leader answered by another
    #: process saves one call's price), from genai-prices
    #: (the ``cost`` extra), and the same by the price list's model id. Priced in a
    #: worker thread as flights end, so it may lag the other counts by a moment.
    cost_saved: Decimal = Decimal(0)
    cost_saved_by_model: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    #: Calls saved whose answer reported tokens but could not be priced: a model the price
    #: list does not know, or the ``cost`` extra not installed. Their tokens still count.
    cost_unpriced: int = 0
    #: With a Redis backend: flights this process led for the fleet, flights it followed
    #: from another process, and Redis troubles that fell back to local coalescing.
    redis_led: int = 0
    redis_followed: int = 0
    redis_errors: int = 0
    #: With a Redis backend and a ``window``: flights answered from Redis by a response
    #: another process finished within the window.
    redis_window_hits: int = 0

    @property
    def bypassed_total(self) -> int:
        return sum(self.bypassed.values())


_FIELDS = frozenset(field.name for field in fields(CoalesceStats)) - {
    "bypassed",
    "in_flight",
    "waiters",
    "tokens_saved",
    "tokens_saved_by_type",
    "cost_saved",
    "cost_saved_by_model",
}

#: A request's outcome: it led a flight, joined one, was served from the window, or
#: passed through (with a reason).
LED, JOINED, WINDOW, BYPASSED = "led", "joined", "window", "bypassed"


class Counters:
    """Thread-safe counters; sync threads and event loops update the same ones.

    Each method is one event, counted for ``stats()`` and recorded in the OpenTelemetry
    metrics (``_telemetry``) by the same call, so the two always agree.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bypassed: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._cost: dict[str, Decimal] = {}
        #: Where metrics and span notes go: its fields are None while nothing records
        #: them (no OpenTelemetry, or ``telemetry=False``).
        self.recorder = Recorder()
        #: Prices shared LLM answers, off the callers' path.
        self.pricer = Pricer(self.cost_saved, self._unpriced)

    def add(self, name: str, amount: int = 1) -> None:
        """A count of *name* that has no metric of its own (``coalesced``, ``redis_led``...)."""
        with self._lock:
            self._counts[name] += amount

    def request(
        self,
        outcome: str,
        request: Any,
        reason: str | None = None,
        flight_id: str | None = None,
        callers: int = 0,
        coalesced: bool = False,
    ) -> None:
        """A request has its outcome (once per request, in its caller's context);
        *coalesced*: it is answered with a response it did not lead (one lock for both)."""
        with self._lock:
            self._counts["requests"] += 1
            if coalesced:
                self._counts["coalesced"] += 1
            if reason is not None:
                self._bypassed[reason] += 1
            elif outcome == WINDOW:
                self._counts["window_hits"] += 1
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            telemetry.request(outcome, reason, request)
        note_span = self.recorder.note_span
        if note_span is not None:
            note_span(outcome, reason, flight_id, callers)

    def upstream(self, request: Any) -> None:
        """*request* is handed to the inner transport."""
        with self._lock:
            self._counts["upstream_calls"] += 1
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            telemetry.upstream(request)

    def flight_ended(self, callers: int) -> None:
        """A flight has ended with *callers* callers; recorded if it was shared.

        A flight of one shared nothing, and is the whole of the path that does not
        coalesce: recording it (an SDK histogram's record costs about 3 µs) took 4-6 %
        on that path in process (benchmarks/telemetry.py). Their number is still known:
        ``requests{outcome=led}`` less this histogram's count.
        """
        if callers < 2:
            return
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            telemetry.flight_ended(callers)

    def saved(self, size: int, tokens: Tokens | None = None) -> None:
        """*size* bytes (and *tokens*) not fetched again."""
        by_type = tokens.by_type() if tokens is not None else {}
        with self._lock:
            self._counts["bytes_saved"] += size
            self._tokens.update(by_type)
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            if size:
                telemetry.bytes_saved(size)
            telemetry.tokens_saved(by_type)

    def cost_saved(self, price: Price, calls: int) -> None:
        """*calls* calls of *price* not made (from the pricer's worker thread)."""
        usd = price.usd * calls
        with self._lock:
            self._cost[price.model] = self._cost.get(price.model, Decimal(0)) + usd
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            telemetry.cost_saved(usd, price.provider, price.model)

    def _unpriced(self, calls: int) -> None:
        self.add("cost_unpriced", calls)

    def backend_error(self, kind: str) -> None:
        """The backend failed (its ``error.type`` is *kind*) and fell back to local."""
        with self._lock:
            self._counts["redis_errors"] += 1
        telemetry = self.recorder.telemetry
        if telemetry is not None:
            telemetry.backend_error(kind)

    def snapshot(self, in_flight: int, waiters: int) -> CoalesceStats:
        with self._lock:
            counts = dict(self._counts)
            bypassed = MappingProxyType(dict(self._bypassed))
            tokens = MappingProxyType(dict(self._tokens))
            cost = MappingProxyType(dict(self._cost))
        # Only the fields a snapshot has: a backend counting under a name of its own
        # must not make stats() raise in the middle of a service.
        known = {name: value for name, value in counts.items() if name in _FIELDS}
        return CoalesceStats(
            bypassed=bypassed,
            in_flight=in_flight,
            waiters=waiters,
            tokens_saved=sum(tokens.values()),
            tokens_saved_by_type=tokens,
            cost_saved=sum(cost.values(), Decimal(0)),
            cost_saved_by_model=cost,
            **known,
        )
