"""The key: what makes two requests "the same request".

A key is a hash of the method, the normalised URL, the headers that matter and the
body (JSON canonicalised). Credentials always take part, hashed with the rest, so a
response is never shared between callers whose credentials differ and a key never
reveals a secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_HEADER_PREFIXES",
    "DEFAULT_IGNORED_HEADERS",
    "KeyRules",
    "RequestParts",
]

#: Headers that differ between otherwise identical calls: retry counters, per-call
#: timeouts the SDKs send as headers, lengths, and tracing ids. A name ending in ``*``
#: stands for every header starting with what comes before it: ``x-stainless-*`` is the
#: OpenAI and Anthropic SDKs' telemetry (which surface made the call, which OS and
#: runtime), which differs between callers of one request and never changes its answer.
DEFAULT_IGNORED_HEADERS: frozenset[str] = frozenset(
    {
        "x-stainless-*",
        "x-stainless-retry-count",
        "x-stainless-read-timeout",
        "x-stainless-timeout",
        "content-length",
        "traceparent",
        "tracestate",
        "baggage",
        "sentry-trace",
        "x-request-id",
        "x-amzn-trace-id",
    }
)

#: Headers that identify the caller. They are always part of the key; no ignore list
#: can take them out.
CREDENTIAL_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "openai-organization",
        "openai-project",
        "x-goog-api-key",
    }
)

#: Every header starting with one of these is a tenant header (Anthropic's beta and
#: workspace headers, Azure's, the organisation headers of other vendors).
CREDENTIAL_HEADER_PREFIXES: tuple[str, ...] = ("anthropic-", "openai-", "x-api-", "x-goog-")


# A number written with 16 digits or more (integer and fraction parts together) may not
# survive parsing: orjson turns integers past 64 bits into floats, and past 15 digits a
# double may not tell two writings apart. Such a body is keyed by its bytes. A regular
# expression scanning from every digit costs more than the JSON work itself, so a
# translate (digits and dots become "1") and a substring search, both in C, first tell
# whether any run is long enough to matter. Runs inside strings match too, harmlessly:
# keyed by bytes is never wrong, only less often shared.
_NUMERIC = bytes(0x31 if chr(code) in "0123456789." else 0x30 for code in range(256))
_LONG_RUN = b"1" * 16
_LONG_NUMBER = re.compile(rb"(?:[0-9]\.?){16,}")


def _has_long_number(body: bytes) -> bool:
    return _LONG_RUN in body.translate(_NUMERIC) and _LONG_NUMBER.search(body) is not None


def is_credential(name: str) -> bool:
    return name in CREDENTIAL_HEADERS or name.startswith(CREDENTIAL_HEADER_PREFIXES)


@dataclass(frozen=True, slots=True)
class RequestParts:
    """What a key function sees of a request. Header names are lower-case."""

    method: str
    scheme: str
    host: str
    port: int | None
    target: bytes  # raw path and query, query order kept
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str


KeyFunction = Callable[[RequestParts], str]


@dataclass(frozen=True)
class KeyRules:
    """How the default key is made.

    ``ignore_headers`` replaces :data:`DEFAULT_IGNORED_HEADERS` (pass
    ``DEFAULT_IGNORED_HEADERS | {...}`` to add to it). ``ignore_json_fields`` names
    top-level JSON body fields left out of the key, such as a per-user ``user``.
    """

    ignore_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS
    ignore_json_fields: frozenset[str] = field(default_factory=frozenset)
    _ignored_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        lowered = frozenset(name.lower() for name in self.ignore_headers)
        # A credential named in the ignore list stays in the key: the promise that
        # tenants never share outranks configuration.
        object.__setattr__(self, "ignore_headers", frozenset(n for n in lowered if not is_credential(n)))
        object.__setattr__(self, "ignore_json_fields", frozenset(self.ignore_json_fields))
        prefixes = tuple(sorted(name[:-1] for name in lowered if name.endswith("*")))
        object.__setattr__(self, "_ignored_prefixes", prefixes)

    def ignores(self, name: str) -> bool:
        """Whether header *name* (lower-case) is left out of the key."""
        if name in self.ignore_headers:
            return True
        prefixes = self._ignored_prefixes
        return bool(prefixes) and name.startswith(prefixes) and not is_credential(name)

    def key(self, parts: RequestParts) -> str:
        digest = hashlib.blake2b(digest_size=20)
        update = digest.update
        update(parts.method.encode())
        update(b"\0")
        update(parts.scheme.encode())
        update(b"://")
        update(parts.host.encode())
        update(b":%d\0" % (parts.port or 0))
        update(parts.target)
        update(b"\0")
        ignores = self.ignores
        for name, value in sorted(
            (header for header in parts.headers if not ignores(header[0])), key=_header_name
        ):
            update(name.encode())
            update(b":")
            update(value.encode("utf-8", "surrogateescape"))
            update(b"\n")
        update(b"\0")
        update(self.canonical_body(parts.body, parts.content_type))
        return digest.hexdigest()

    def canonical_body(self, body: bytes, content_type: str) -> bytes:
        """The body as it takes part in the key: canonical JSON where it is JSON."""
        if not body or "json" not in content_type or _has_long_number(body):
            return b"B" + body
        try:
            document = orjson.loads(body)
            dropped = b""
            if self.ignore_json_fields and isinstance(document, dict):
                left_out = {k: v for k, v in document.items() if k in self.ignore_json_fields}
                if left_out:
                    dropped = orjson.dumps(left_out)
                    document = {k: v for k, v in document.items() if k not in self.ignore_json_fields}
            # orjson refuses documents nested past its recursion limit on the way in and
            # out, so hostile nesting lands in the except below and is keyed by its bytes.
            canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError, RecursionError):
            return b"B" + body
        # orjson writes one colon per member and never escapes one inside a string, so a
        # body with more colons than its canonical form had duplicate keys: orjson kept
        # the last, a server may keep the first, and two such bodies must not share.
        # (Escaped colons also mismatch, harmlessly: keyed by bytes is never wrong.)
        if body.count(b":") != canonical.count(b":") + dropped.count(b":"):
            return b"B" + body
        return b"J" + canonical


def _header_name(header: tuple[str, str]) -> str:
    return header[0]
