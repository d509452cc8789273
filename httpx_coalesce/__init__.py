"""httpx-coalesce: identical in-flight HTTP requests become one upstream call.

import httpx
from httpx_coalesce import CoalescingTransport

client = httpx.AsyncClient(transport=CoalescingTransport())
"""

from __future__ import annotations

from ._backend import Backend
from ._key import CREDENTIAL_HEADERS, DEFAULT_IGNORED_HEADERS, RequestParts
from ._limits import Limits
from ._response import CoalesceInfo
from ._stats import CoalesceStats
from ._transport import DEFAULT_METHODS, CoalescingTransport

__version__ = "0.1.0"

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_IGNORED_HEADERS",
    "DEFAULT_METHODS",
    "Backend",
    "CoalesceInfo",
    "CoalesceStats",
    "CoalescingTransport",
    "Limits",
    "RequestParts",
    "__version__",
]
