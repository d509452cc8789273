"""The replay: one upstream response, read by many callers from their own positions.

The body is kept as the list of chunks the upstream sent. Chunks are shared between
readers, never copied per reader; once a body is complete and whole, it is joined once
and every reader that starts from the beginning gets that same bytes object.

A reader that lags (a thousand readers take turns on one core) catches up in batches:
each piece it takes costs it a trip through the client's stream layers. Batches start
at fixed positions and are joined once, for every reader that takes them, so a
thousand lagging readers hold one copy of a batch, not a thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Head", "Replay"]

#: Chunks in a batch, and the most bytes one may hold (past that, chunks go one by one).
_BATCH_CHUNKS = 16
_BATCH_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Head:
    """Status line and headers of the upstream response."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    http_version: bytes | None
    reason_phrase: bytes | None

    @classmethod
    def of(cls, response: Any) -> Head:
        extensions = response.extensions
        return cls(
            status=response.status_code,
            headers=tuple(response.headers.raw),
            http_version=extensions.get("http_version"),
            reason_phrase=extensions.get("reason_phrase"),
        )

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        if value is None or not value.isdigit():
            return None
        return int(value)

    def is_event_stream(self) -> bool:
        content_type = self.header(b"content-type") or b""
        return content_type.lower().startswith(b"text/event-stream")


class Replay:
    """The chunks of one body. Positions are absolute chunk indices.

    Not thread-safe on its own: the flight that owns it holds the lock.
    """

    __slots__ = ("_batches", "_body", "_chunks", "_first", "complete", "retained", "size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._first = 0  # absolute index of _chunks[0]; grows as chunks are released
        self._body: bytes | None = None
        self._batches: dict[int, bytes] = {}  # joined batches by starting position
        self.size = 0  # bytes received in all
        self.retained = 0  # bytes still held, batches included
        self.complete = False

    @property
    def end(self) -> int:
        return self._first + len(self._chunks)

    @property
    def whole(self) -> bool:
        """Every chunk since the first is still held."""
        return self._first == 0

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        self.retained += len(chunk)

    def read(self, position: int) -> tuple[bytes, int]:
        """The data at *position* (which must be held) and the position after it."""
        if position == 0 and self.complete and self._first == 0:
            return self.body(), self.end
        if position < self._first:
            # A reader's data was freed under it: a bug, never to be papered over with
            # the wrong bytes.
            raise AssertionError(f"replay position {position} was released (first held: {self._first})")
        chunks = self._chunks
        index = position - self._first
        if position % _BATCH_CHUNKS == 0 and index + _BATCH_CHUNKS <= len(chunks):
            batch = self._batches.get(position)
            if batch is None and sum(map(len, chunks[index : index + _BATCH_CHUNKS])) <= _BATCH_BYTES:
                batch = self._batches[position] = b"".join(chunks[index : index + _BATCH_CHUNKS])
                self.retained += len(batch)
            if batch is not None:
                return batch, position + _BATCH_CHUNKS
        return chunks[index], position + 1

    def body(self) -> bytes:
        """The complete, whole body as one bytes object, joined at most once."""
        if self._body is None:
            self._body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        return self._body

    def release_batches_before(self, position: int) -> None:
        """Free the joined batches no reader can still take (their chunks stay held)."""
        if self._batches:
            for start in [start for start in self._batches if start < position]:
                self.retained -= len(self._batches.pop(start))

    @property
    def batch_boundary(self) -> bool:
        """The last chunk appended completed a batch."""
        return self.end % _BATCH_CHUNKS == 0

    def release_before(self, position: int) -> None:
        """Free the chunks no reader can still need."""
        drop = position - self._first
        if drop <= 0:
            return
        self.retained -= sum(len(chunk) for chunk in self._chunks[:drop])
        del self._chunks[:drop]
        self._first = position
        self._body = None
        self.release_batches_before(position)
