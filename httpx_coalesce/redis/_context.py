"""What the leader and follower sides of one backend share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._limits import Limits
from .._stats import Counters
from ._errors import RedisTrouble
from ._settings import Settings

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    limits: Limits
    counters: Counters
    #: Called with every Redis failure: counts it, logs it, opens the breaker.
    report: Callable[[RedisTrouble], None]
    #: Seconds a finished response stays in Redis for late callers (the transport's
    #: ``window``); 0: no fleet window.
    window: float = 0.0

    @property
    def window_ms(self) -> int:
        return max(1, round(self.window * 1000))
