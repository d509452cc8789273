"""The Redis keys of one flight, and the tokens that tell its rounds apart.

A request key is already a hash, so no key here reveals anything of a request. Every
key of a flight carries the hash tag (``{...}``) of the flight's bucket: one of
``BUCKETS`` tags the request keys are spread over. On Redis Cluster a tag is a slot, so
the lease and the streams of a flight live in one slot, where one script can touch them
together; and the streams of all flights of a bucket share it, so a process reads all the
streams of a bucket with one blocking ``XREAD`` (a multi-key command must stay within one
slot). The buckets spread the flights over that many slots, so over up to that many
cluster shards.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

__all__ = ["BUCKETS", "FlightKeys", "bucket_tag", "is_token", "new_token", "tag_of"]

#: Hash tags flights are spread over: on Redis Cluster, at most this many blocking
#: reads per process (one per bucket with followers) and this many slots in use.
BUCKETS = 64

_TOKEN_BYTES = 8
_TOKEN = re.compile(rb"[0-9a-f]{%d}" % (_TOKEN_BYTES * 2))


def new_token() -> str:
    """A leader's token: unguessable, so no other leader ever holds the same lease."""
    return secrets.token_hex(_TOKEN_BYTES)


def is_token(value: bytes) -> bool:
    """Whether *value*, read back from Redis, is a token one of us wrote."""
    return _TOKEN.fullmatch(value) is not None


def bucket_tag(key: str) -> str:
    """The hash tag, with its braces, of the bucket *key* falls in."""
    return f"{{hc{zlib.crc32(key.encode()) % BUCKETS:02d}}}"


def tag_of(redis_key: str) -> str:
    """The hash tag, with its braces, of a key written here (every key has one)."""
    start = redis_key.index("{")
    return redis_key[start : redis_key.index("}", start) + 1]


@dataclass(frozen=True, slots=True)
class FlightKeys:
    prefix: str
    key: str

    @property
    def lease(self) -> str:
        """Holds the current leader's token while a round is in flight."""
        return f"{self.prefix}lease:{bucket_tag(self.key)}:{self.key}"

    @property
    def window(self) -> str:
        """The finished response kept for late callers (the fleet window), while it lasts."""
        return f"{self.prefix}window:{bucket_tag(self.key)}:{self.key}"

    def round(self, token: str) -> str:
        """Holds *token* while the leader of its round is alive (renewed each heartbeat),
        whoever holds the lease: followers judge their leader by this, not by the lease."""
        return f"{self.prefix}round:{bucket_tag(self.key)}:{self.key}:{token}"

    def stream(self, token: str) -> str:
        """The records of the round led by *token*: a follower never reads another round's."""
        return f"{self.prefix}stream:{bucket_tag(self.key)}:{self.key}:{token}"
