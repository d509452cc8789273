"""The spool: the part of a big body that only lagging readers still need, on disk.

A flight holds at most ``Limits.max_body_bytes`` of a body in memory. Past that, what
its slowest readers have not read yet goes to temporary files (as nginx's
``proxy_temp_path`` does), so the upstream is read at the pace of the fastest reader
and nobody waits for the slowest. The files are nameless (``tempfile.TemporaryFile``:
on Linux they are unlinked from the start), so the system reclaims them even if the
process dies; the flight closes them when no reader needs them any more.

The spool is a row of segments, each a file holding a contiguous run of chunks. A
segment every reader has passed is closed at once, so the disk in use follows how far
the slowest reader lags, not how long the body is. Not thread-safe: the flight's lock
guards it.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from typing import IO

__all__ = ["Spool", "SpoolFull"]

#: Most bytes one read from the spool hands a reader: big enough that a lagging reader
#: catches up in few steps, small enough to read under the flight's lock in microseconds.
READ_BYTES = 256 * 1024


class SpoolFull(Exception):
    """Writing a chunk would take the spool past its bound."""


class _Segment:
    __slots__ = ("file", "first", "starts", "written")

    def __init__(self, first: int, directory: str | None) -> None:
        # Closed by the spool when no reader needs it (not a with-block: it outlives this call).
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self.first = first  # chunk position of the first chunk in this file
        self.starts: list[int] = []  # byte offset of each chunk in the file
        self.written = 0

    @property
    def end(self) -> int:
        return self.first + len(self.starts)


class Spool:
    """Chunks ``[first, end)`` of a body, in files; positions are absolute chunk indices."""

    __slots__ = ("_directory", "_limit", "_segment_bytes", "_segments", "disk")

    def __init__(self, limit: int, segment_bytes: int, directory: str | None = None) -> None:
        self._limit = limit
        self._segment_bytes = max(1, segment_bytes)
        self._directory = directory
        self._segments: list[_Segment] = []
        self.disk = 0  # bytes in the files still open

    @property
    def empty(self) -> bool:
        return not self._segments

    @property
    def first(self) -> int:
        return self._segments[0].first

    @property
    def end(self) -> int:
        return self._segments[-1].end

    def files(self) -> int:
        return len(self._segments)

    def append(self, position: int, chunk: bytes) -> None:
        """Write the chunk at *position* (the spool's end, or anything if empty)."""
        if self.disk + len(chunk) > self._limit:
            raise SpoolFull
        segments = self._segments
        if not segments or segments[-1].written >= self._segment_bytes:
            if segments and segments[-1].end != position:
                raise AssertionError(f"spool gap: end {segments[-1].end}, chunk {position}")
            segments.append(_Segment(position, self._directory))
        segment = segments[-1]
        if segment.end != position:
            raise AssertionError(f"spool gap: end {segment.end}, chunk {position}")
        # Written straight to the descriptor, unbuffered: readers pread it at once.
        fd = segment.file.fileno()
        view = memoryview(chunk)
        offset = segment.written
        while view:
            done = os.pwrite(fd, view, offset)
            view = view[done:]
            offset += done
        segment.starts.append(segment.written)
        segment.written = offset
        self.disk += len(chunk)

    def read(self, position: int) -> tuple[bytes, int]:
        """Whole chunks from *position* (held here), up to ``READ_BYTES`` (at least one),
        and the position after them."""
        segments = self._segments
        index = bisect.bisect_right([segment.first for segment in segments], position) - 1
        if index < 0 or position >= segments[index].end:
            raise AssertionError(f"spool position {position} is not held")
        segment = segments[index]
        starts = segment.starts
        at = position - segment.first
        start = starts[at]
        limit = start + READ_BYTES
        # Chunks [at, stop): each next one while it ends within READ_BYTES; at least one.
        ends = len(starts)
        stop = at + 1
        while stop < ends and (starts[stop + 1] if stop + 1 < ends else segment.written) <= limit:
            stop += 1
        end_byte = segment.written if stop >= ends else starts[stop]
        data = os.pread(segment.file.fileno(), end_byte - start, start)
        return data, segment.first + stop

    def release_before(self, position: int) -> None:
        """Close the files whose every chunk lies before *position*."""
        segments = self._segments
        while segments and segments[0].end <= position:
            segment = segments.pop(0)
            self.disk -= segment.written
            segment.file.close()

    def close(self) -> None:
        for segment in self._segments:
            segment.file.close()
        self._segments.clear()
        self.disk = 0
