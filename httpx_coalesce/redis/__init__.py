"""Fleet-wide coalescing through Redis (``pip install "httpx-coalesce[redis]"``).

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend

transport = CoalescingTransport(backend=RedisBackend.from_url("redis://localhost:6379/0"))
"""

from __future__ import annotations

from ._backend import RedisBackend

__all__ = ["RedisBackend"]
