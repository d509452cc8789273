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

from typing import Any

__all__ = ["Head", "Replay"]

#: Chunks in a batch, and the most bytes one may hold (past that, chunks go one by one).
_BATCH_CHUNKS = 16
_BATCH_BYTES = 64 * 1024


class Head:
    """Status line and headers of the upstream response.

    The few headers the flight itself asks about are found in one pass, once: a
    flight asks several times, and every scan lower-cases each name again.
    """

    __slots__ = ("_asked", "_built", "_shared", "headers", "http_version", "reason_phrase", "status")

    def __init__(
        self,
        status: int,
        headers: tuple[tuple[bytes, bytes], ...],
        http_version: bytes | None,
        reason_phrase: bytes | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.http_version = http_version
        self.reason_phrase = reason_phrase
        self._asked: dict[bytes, bytes] | None = None
        self._built: dict[tuple[str, bool], Any] = {}
        self._shared: tuple[tuple[bytes, bytes], ...] | None = None

    @classmethod
    def of(cls, response: Any) -> Head:
        extensions = response.extensions
        return cls(
            response.status_code,
            tuple(response.headers.raw),
            extensions.get("http_version"),
            extensions.get("reason_phrase"),
        )

    def __repr__(self) -> str:
        return f"Head(status={self.status}, headers={len(self.headers)})"

    @property
    def shared_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers every caller may get: all but ``Set-Cookie``.

        A cookie is issued to the caller whose request was sent, never to the others
        (as request-collapsing caches do): it may carry a session of that caller's own.
        """
        shared = self._shared
        if shared is None:
            if self.header(b"set-cookie") is None and self.header(b"set-cookie2") is None:
                shared = self.headers
            else:
                shared = tuple(pair for pair in self.headers if pair[0].lower() not in _COOKIES)
            self._shared = shared
        return shared

    def headers_in(self, module: Any, leader: bool = False) -> Any:
        """The headers as *module*'s (httpx or httpx2) ``Headers``, built once: all of
        them for the *leader*, the shared ones for everyone else.

        Every caller's Response copies them from this one (a list copy), where building
        them from the raw pairs checks and normalises every header again, per caller.
        Nobody may change the object returned.
        """
        built = self._built.get((module.__name__, leader))
        if built is None:
            pairs = self.headers if leader else self.shared_headers
            built = self._built[(module.__name__, leader)] = module.Headers(list(pairs))
        return built

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower-case), or None."""
        asked = self._asked
        if asked is None:
            asked = {}
            for key, value in self.headers:
                lowered = key.lower()
                if lowered in _ASKED and lowered not in asked:
                    asked[lowered] = value
            self._asked = asked
        if name in _ASKED:
            return asked.get(name)
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


#: The response headers the flight asks about (content handling, the window's rules).
_ASKED = frozenset({b"content-type", b"content-length", b"set-cookie", b"set-cookie2", b"cache-control"})
_COOKIES = frozenset({b"set-cookie", b"set-cookie2"})


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
