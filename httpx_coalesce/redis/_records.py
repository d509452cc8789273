"""The records of a flight's stream, as the leader writes and followers read them.

Each stream entry is one record: a type and its data. A round is a head, body chunks,
then exactly one final record (end, error, too large or abort); ``presence`` (once, at
any point) asks its followers to say that they still wait (see ``_follow.Presence``). A round that stopped
early (its leader aborted, or died and left no final record) may get one more record
from the leader that replaced it: ``moved``, naming the new round, so that its
followers go there instead of electing again.

A leader that lost what it wrote (Redis restarted without persistence, failed over
before replicating, or evicted the stream) writes its round again from the start: a
head once more, then the chunks it still holds. So each chunk carries its byte offset,
and a reader keeps only the bytes it does not have yet. Only the response
travels: status, headers and body, and an upstream error's class name and message
(with any URL query taken out, since a query may carry an API key).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import orjson

from .._replay import Head
from ._errors import Garbage

__all__ = [
    "ABORT",
    "CHUNK",
    "END",
    "ERROR",
    "HEAD",
    "MOVED",
    "PRESENCE",
    "TOO_LARGE",
    "Record",
    "UpstreamFailure",
    "chunk_record",
    "decode_chunk",
    "decode_error",
    "decode_head",
    "decode_window",
    "error_record",
    "head_record",
    "window_value",
]

HEAD = b"h"
CHUNK = b"c"
#: Final records: exactly one ends a round.
END = b"e"
ERROR = b"x"
TOO_LARGE = b"l"
ABORT = b"a"
#: Written by a successor into the stream of a round that stopped early; data: its token.
MOVED = b"m"
#: The leader's own callers all left: its followers from now on mark their presence,
#: or the leader stops its upstream call. No data.
PRESENCE = b"p"

#: (type, data)
Record = tuple[bytes, bytes]

_MAX_MESSAGE = 1000
#: A chunk's byte offset in the body, ahead of its bytes.
_OFFSET = struct.Struct(">Q")
#: The length of a window entry's head, ahead of the head and the body.
_HEAD_LENGTH = struct.Struct(">I")
_URL_QUERY = re.compile(r"(\w+://[^\s?#'\"]*)\?[^\s#'\"]*")


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """An upstream error as a follower learns it: class name and message."""

    name: str
    message: str


def head_record(head: Head) -> Record:
    # Followers in other processes get what local followers get: no Set-Cookie, which
    # is the leader's caller's alone (and so never stored in Redis).
    document = {
        "s": head.status,
        "h": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in head.shared_headers],
        "v": None if head.http_version is None else head.http_version.decode("latin-1"),
        "r": None if head.reason_phrase is None else head.reason_phrase.decode("latin-1"),
    }
    return HEAD, orjson.dumps(document)


def decode_head(data: bytes) -> Head:
    try:
        document = orjson.loads(data)
        status = document["s"]
        headers = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in document["h"])
        version = document["v"]
        reason = document["r"]
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise ValueError(f"status {status!r}")
        return Head(
            status=status,
            headers=headers,
            http_version=None if version is None else version.encode("latin-1"),
            reason_phrase=None if reason is None else reason.encode("latin-1"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise Garbage(f"unreadable head record: {error}") from None


def chunk_record(offset: int, data: bytes) -> Record:
    return CHUNK, _OFFSET.pack(offset) + data


def decode_chunk(data: bytes) -> tuple[int, bytes]:
    """A chunk record's byte offset and bytes."""
    if len(data) <= _OFFSET.size:
        raise Garbage("a chunk record without bytes")
    (offset,) = _OFFSET.unpack_from(data)
    return offset, data[_OFFSET.size :]


def window_value(head: Head, body: bytes) -> bytes:
    """A finished response as the fleet window keeps it: its head record, then its body."""
    _, document = head_record(head)
    return _HEAD_LENGTH.pack(len(document)) + document + body


def decode_window(value: bytes) -> tuple[Head, bytes]:
    if len(value) < _HEAD_LENGTH.size:
        raise Garbage("an unreadable window entry")
    (length,) = _HEAD_LENGTH.unpack_from(value)
    end = _HEAD_LENGTH.size + length
    if end > len(value):
        raise Garbage("an unreadable window entry")
    return decode_head(value[_HEAD_LENGTH.size : end]), value[end:]


def error_record(error: BaseException) -> Record:
    if isinstance(error, Exception):
        message = _URL_QUERY.sub(r"\1?...", str(error))[:_MAX_MESSAGE]
    else:
        # A KeyboardInterrupt, SystemExit or framework abort in the leading process: its
        # followers get a transport error saying so (no class of that name is theirs).
        message = (
            f"the shared upstream call was stopped by {type(error).__name__} in the process that sent it"
        )
    return ERROR, orjson.dumps({"n": type(error).__name__, "m": message})


def decode_error(data: bytes) -> UpstreamFailure:
    try:
        document = orjson.loads(data)
        name, message = document["n"], document["m"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise Garbage(f"unreadable error record: {error}") from None
    if not isinstance(name, str) or not isinstance(message, str):
        raise Garbage("unreadable error record")
    return UpstreamFailure(name, message)
