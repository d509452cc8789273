"""How long leases, heartbeats, waits and streams last, checked once."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Settings"]

DEFAULT_PREFIX = "httpx-coalesce:"


@dataclass(frozen=True, slots=True)
class Settings:
    #: Every Redis key this backend writes starts with this.
    prefix: str = DEFAULT_PREFIX
    #: Seconds a leader's lease lasts without renewal: how long followers wait on a
    #: leader that died before one of them takes over.
    lease: float = 5.0
    #: Seconds between lease renewals, and between a waiting follower's lease checks.
    #: None: a third of the lease, so two renewals may fail before the lease runs out.
    heartbeat: float | None = None
    #: Seconds a follower waits with no new record before it gives up on the leader.
    #: None: the request's own read timeout plus one lease (the leader's upstream read
    #: times out first, and its error reaches the followers), or no limit if the
    #: request has no read timeout.
    follower_wait: float | None = None
    #: Seconds a flight's stream stays in Redis after its last record; also how far a
    #: follower may fall behind the leader before it loses the rest of the body.
    stream_ttl: float = 30.0
    #: Seconds to leave Redis alone after it failed, so a dead Redis costs one
    #: timeout per back-off period instead of one per request.
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            # Redis Cluster hashes the first {...} of a key: a brace in the prefix would
            # move the flight's keys out of the slot its scripts and reads rely on.
            raise ValueError("prefix must not contain '{' or '}'")
        if self.lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            raise ValueError("heartbeat must be > 0 and shorter than the lease")
        if self.follower_wait is not None and self.follower_wait <= 0:
            raise ValueError("follower_wait must be > 0 seconds")
        if self.stream_ttl <= 0:
            raise ValueError("stream_ttl must be > 0 seconds")
        if self.backoff < 0:
            raise ValueError("backoff must be >= 0 seconds")

    @property
    def interval(self) -> float:
        """Seconds between renewals (the resolved heartbeat)."""
        return self.heartbeat if self.heartbeat is not None else self.lease / 3

    @property
    def lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    @property
    def stream_ttl_ms(self) -> int:
        return max(1, round(self.stream_ttl * 1000))

    def wait_limit(self, request_extensions: dict[str, object]) -> float | None:
        """How long a follower of this request waits for a record, or None (no limit)."""
        if self.follower_wait is not None:
            return self.follower_wait
        timeouts = request_extensions.get("timeout")
        read = timeouts.get("read") if isinstance(timeouts, dict) else None
        if isinstance(read, int | float):
            return float(read) + self.lease
        return None
