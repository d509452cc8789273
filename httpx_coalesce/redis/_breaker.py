"""The circuit breaker: after Redis fails, leave it alone for a while.

Without it a dead or hanging Redis would add a connect timeout to every request. After
the back-off, one flight probes Redis while the others still skip it; the probe's
success closes the breaker, its failure starts another back-off.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Breaker"]


class Breaker:
    def __init__(self, backoff: float) -> None:
        self._backoff = backoff
        self._lock = threading.Lock()
        #: 0.0 while closed; else when the next probe may go.
        self._retry_at = 0.0

    @property
    def closed(self) -> bool:
        return self._retry_at == 0.0

    def allow(self) -> bool:
        """Whether this flight may use Redis."""
        if self._retry_at == 0.0:
            return True
        with self._lock:
            now = time.monotonic()
            if self._retry_at == 0.0:
                return True
            if now < self._retry_at:
                return False
            # This flight is the probe; the rest keep skipping until it reports back.
            self._retry_at = now + self._backoff
            return True

    def failed(self) -> bool:
        """Redis failed; True if that opened the breaker (it was closed)."""
        with self._lock:
            opened = self._retry_at == 0.0
            self._retry_at = time.monotonic() + self._backoff
            return opened

    def succeeded(self) -> None:
        if self._retry_at != 0.0:
            with self._lock:
                self._retry_at = 0.0
