"""The bounds every flight table keeps, with defaults sized for a busy service."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    #: Distinct keys in flight at once; past it, new keys pass through.
    max_flights: int = 10_000
    #: Callers attached to one flight; past it, new callers pass through.
    max_waiters: int = 100_000
    #: Response bytes one flight holds in memory. A live body stops taking joiners once
    #: past it, and then holds only what its readers still need: the newest part in
    #: memory, the rest a lagging reader has not read yet in the spool. (Only small
    #: bodies, see ``_upstream.SMALL_BODY_BYTES``, are read whole before their headers
    #: are handed out.)
    max_body_bytes: int = 16 * 1024 * 1024
    #: Disk one flight may use for what its lagging readers still need past
    #: ``max_body_bytes``: nameless temporary files in ``tempfile.gettempdir()`` (set
    #: ``TMPDIR`` to move them), gone when no reader needs them, or with the process.
    #: A reader that falls further behind is let go with a ``ReadError``; the upstream
    #: and every other reader never wait for it.
    max_spool_bytes: int = 1024 * 1024 * 1024
    #: The longest in-memory request body that is keyed; a longer one passes through (a
    #: streamed body always does: it is never read to make a key).
    max_request_bytes: int = 4 * 1024 * 1024
    #: Finished responses kept for the window, and their bytes in all.
    window_entries: int = 1024
    window_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        # Refused here rather than met at the first request: a zero or negative bound
        # would quietly turn coalescing (or the window) off, and a float or str would
        # fail deep inside a flight.
        for field in fields(self):
            value = getattr(self, field.name)
            # bool is an int to Python, but max_flights=True is a mistake, not 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"Limits.{field.name} must be a positive int, not {type(value).__name__} {value!r}"
                )
            if value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive int (> 0), not {value!r}")
