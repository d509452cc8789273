"""The replay: one upstream response, read by many callers from their own positions.

The body is kept as the list of chunks the upstream sent, shared between readers and
never copied per reader. A reader keeping pace (at the live edge) gets the very chunk
objects the upstream sent.

A reader that comes late or lags behind (a thousand readers take turns on one core)
gets the rest of what is held as one object, joined once and shared by every reader
that asks from the same place: the whole body, once it is complete, is one ``bytes``
object for every reader that starts from the beginning. httpx's ``read()`` joins what
a stream yields; a ``b"".join`` of one ``bytes`` is that very object, so a thousand
such readers holding ``.content`` hold one copy, not a thousand.

Past the flight's memory bound, the oldest chunks a lagging reader still needs move
to the spool (see ``_spool``) and are read back from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._spool import Spool

__all__ = ["Head", "Replay"]


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

    Chunks ``[first, end)`` are in memory; before them, the spool may hold a run that
    ends where memory begins. Not thread-safe on its own: the flight's lock guards it.
    """

    __slots__ = (
        "_body",
        "_chunks",
        "_first",
        "_rests",
        "_starts",
        "budget",
        "cached",
        "complete",
        "held",
        "size",
        "spool",
    )

    def __init__(self, budget: int = 16 * 1024 * 1024) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # byte offset in the body of each chunk held
        self._first = 0  # absolute index of _chunks[0]; grows as chunks are released
        self._body: bytes | None = None
        #: Joined rests by starting position: (the end they reach, the bytes).
        self._rests: dict[int, tuple[int, bytes]] = {}
        #: Bytes of chunks plus joined rests this replay may hold in memory.
        self.budget = budget
        self.size = 0  # bytes received in all
        self.held = 0  # bytes of chunks held in memory
        self.cached = 0  # bytes of joined rests held
        self.complete = False
        self.spool: Spool | None = None

    @property
    def end(self) -> int:
        return self._first + len(self._chunks)

    @property
    def first(self) -> int:
        """The first position still held in memory."""
        return self._first

    @property
    def retained(self) -> int:
        """Bytes held in memory: chunks, and rests joined from them."""
        return self.held + self.cached

    @property
    def whole(self) -> bool:
        """Every chunk since the first is still held in memory."""
        return self._first == 0

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._starts.append(self.size)
        self.size += len(chunk)
        self.held += len(chunk)

    def read(self, position: int) -> tuple[bytes, int]:
        """The data at *position* (which must be held) and the position after it."""
        first = self._first
        if position < first:
            spool = self.spool
            if spool is None or spool.empty or position < spool.first:
                # A reader's data was freed under it: a bug, never to be papered over
                # with the wrong bytes.
                raise AssertionError(f"replay position {position} was released (first held: {first})")
            return spool.read(position)
        chunks = self._chunks
        index = position - first
        if index == len(chunks) - 1:
            return chunks[index], position + 1  # at the live edge: the chunk itself
        if position == 0 and self.complete and first == 0:
            return self.body(), self.end
        return self._rest(position, index)

    def _rest(self, position: int, index: int) -> tuple[bytes, int]:
        end = self.end
        rest = self._rests.get(position)
        if rest is not None and rest[0] == end:
            return rest[1], end
        if rest is not None:
            del self._rests[position]
            self.cached -= len(rest[1])
        size = self.size - self._starts[index]
        if self.retained + size > self.budget:
            # No room for one more joined copy: the reader goes chunk by chunk.
            return self._chunks[index], position + 1
        joined = b"".join(self._chunks[index:])
        self._rests[position] = (end, joined)
        self.cached += size
        return joined, end

    def whole_body(self) -> bytes | None:
        """``body()`` if the body is complete and whole, else None: one call per caller
        that takes it (every follower of a buffered response)."""
        if not self.complete or self._first != 0:
            return None
        body = self._body
        return self.body() if body is None else body

    def body(self) -> bytes:
        """The complete, whole body as one bytes object, joined at most once."""
        if self._body is None:
            if len(self._chunks) == 1:
                self._body = self._chunks[0]
            else:
                rest = self._rests.get(0)
                # A rest from the start that reaches the end is the body, joined already.
                self._body = rest[1] if rest is not None and rest[0] == self.end else b"".join(self._chunks)
        return self._body

    def drop_rests(self, before: int | None = None) -> None:
        """Free joined rests (those starting before *before*, or all): no reader can
        still take them, or memory is needed for chunks."""
        rests = self._rests
        if rests:
            for start in [start for start in rests if before is None or start < before]:
                self.cached -= len(rests.pop(start)[1])

    def release_before(self, position: int) -> None:
        """Free the chunks (and spool files) no reader can still need."""
        spool = self.spool
        if spool is not None and not spool.empty:
            spool.release_before(position)
        drop = position - self._first
        if drop <= 0:
            return
        drop = min(drop, len(self._chunks))
        self.held -= sum(map(len, self._chunks[:drop]))
        del self._chunks[:drop]
        del self._starts[:drop]
        self._first += drop
        self._body = None
        self.drop_rests(position)

    def spill(self, limit: int, make_spool: Callable[[], Spool]) -> None:
        """Move the oldest chunks to the spool until memory holds at most *limit* bytes
        of chunks (joined rests go first: they are only a convenience).

        Raises ``SpoolFull`` when the spool has no room for the next one.
        """
        if self.retained <= limit:
            return
        self.drop_rests()
        chunks = self._chunks
        while self.held > limit and chunks:
            spool = self.spool
            if spool is None:
                spool = self.spool = make_spool()
            chunk = chunks[0]
            spool.append(self._first, chunk)
            del chunks[0]
            del self._starts[0]
            self._first += 1
            self.held -= len(chunk)
            self._body = None

    def close(self) -> None:
        """Nobody reads any more: give the spool's files back."""
        if self.spool is not None:
            self.spool.close()
