"""The Redis keys of one flight, and the tokens that tell its rounds apart.

A request key is already a hash, so no key here reveals anything of a request. The
request key sits in a hash tag (``{...}``) so the lease and the streams of one flight
live in one Redis Cluster slot, where one script can touch them together.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = ["FlightKeys", "is_token", "new_token"]

_TOKEN_BYTES = 8
_TOKEN = re.compile(rb"[0-9a-f]{%d}" % (_TOKEN_BYTES * 2))


def new_token() -> str:
    """A leader's token: unguessable, so no other leader ever holds the same lease."""
    return secrets.token_hex(_TOKEN_BYTES)


def is_token(value: bytes) -> bool:
    """Whether *value*, read back from Redis, is a token one of us wrote."""
    return _TOKEN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class FlightKeys:
    prefix: str
    key: str

    @property
    def lease(self) -> str:
        """Holds the current leader's token while a round is in flight."""
        return f"{self.prefix}lease:{{{self.key}}}"

    @property
    def window(self) -> str:
        """The finished response kept for late callers (the fleet window), while it lasts."""
        return f"{self.prefix}window:{{{self.key}}}"

    def stream(self, token: str) -> str:
        """The records of the round led by *token*: a follower never reads another round's."""
        return f"{self.prefix}stream:{{{self.key}}}:{token}"
