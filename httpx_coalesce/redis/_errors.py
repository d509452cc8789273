"""What goes wrong on the Redis side. Never raised to a caller: the backend falls back."""

from __future__ import annotations

__all__ = ["Garbage", "RedisTrouble"]


class RedisTrouble(Exception):
    """Redis failed, timed out, or could not be reached."""


class Garbage(RedisTrouble):
    """Redis answered something no leader of ours wrote."""
