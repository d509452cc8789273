"""The window: finished responses kept briefly for late arrivals of the same key.

Off by default (``window=0``). Bounded in entries and bytes; it keeps only successful
responses that the server allows to be shared (no ``no-store``, no ``private``, no
``Set-Cookie``), so that a retry after an error never gets the error back from here.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ._replay import Head
from ._usage import Tokens

__all__ = ["Window", "WindowEntry", "shareable_later"]


@dataclass(frozen=True, slots=True)
class WindowEntry:
    head: Head
    body: bytes
    flight_id: str
    tokens: Tokens
    expires: float


def shareable_later(head: Head) -> bool:
    if not 200 <= head.status < 300 or head.header(b"set-cookie") is not None:
        return False
    cache_control = (head.header(b"cache-control") or b"").lower()
    return b"no-store" not in cache_control and b"private" not in cache_control


class Window:
    def __init__(self, seconds: float, max_entries: int, max_bytes: int) -> None:
        self.seconds = seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, WindowEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> WindowEntry | None:
        if not self._entries:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= time.monotonic():
                self._drop(key)
                return None
            return entry

    def put(self, key: str, entry: WindowEntry) -> None:
        if len(entry.body) > self._max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = entry
            self._bytes += len(entry.body)
            now = time.monotonic()
            while self._entries and (
                len(self._entries) > self._max_entries
                or self._bytes > self._max_bytes
                or next(iter(self._entries.values())).expires <= now
            ):
                self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        self._bytes -= len(self._entries.pop(key).body)
