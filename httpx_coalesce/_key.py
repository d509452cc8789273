"""The key: what makes two requests "the same request".

A key is a hash of the method, the normalised URL, the headers that matter and the
body (JSON canonicalised). Credentials always take part, hashed with the rest, so a
response is never shared between callers whose credentials differ and a key never
reveals a secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter

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
# double may not tell two writings apart. Such a body is keyed by its bytes, unless it is
# orjson's own rendering of what it parsed to (see ``canonical_body``). A regular
# expression scanning from every digit costs more than the JSON work itself, so a
# translate (digits and dots become "1") and a substring search, both in C, first tell
# whether any run is long enough to matter. Runs inside strings match too, harmlessly:
# keyed by bytes is never wrong, only less often shared.
_NUMERIC = bytes(0x31 if chr(code) in "0123456789." else 0x30 for code in range(256))
_LONG_RUN = b"1" * 16
_LONG_NUMBER = re.compile(rb"(?:[0-9]\.?){16,}")


def _has_long_number(body: bytes) -> bool:
    return _LONG_RUN in body.translate(_NUMERIC) and _LONG_NUMBER.search(body) is not None


_CREDENTIAL_NAMES = frozenset(name.encode("latin-1") for name in CREDENTIAL_HEADERS)
_CREDENTIAL_PREFIXES = tuple(prefix.encode("latin-1") for prefix in CREDENTIAL_HEADER_PREFIXES)


def is_credential(name: str) -> bool:
    return name in CREDENTIAL_HEADERS or name.startswith(CREDENTIAL_HEADER_PREFIXES)


def _is_credential_name(name: bytes) -> bool:
    return name in _CREDENTIAL_NAMES or name.startswith(_CREDENTIAL_PREFIXES)


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
    # The ignore list as the request's raw header names are: lower-case bytes.
    _ignored: frozenset[bytes] = field(init=False, repr=False, compare=False, default=frozenset())
    _ignored_prefixes: tuple[bytes, ...] = field(init=False, repr=False, compare=False, default=())
    # The last JSON body keyed, and its canonical form (see ``canonical_body``).
    _last_json: list[tuple[bytes, bytes]] = field(init=False, repr=False, compare=False, default_factory=list)

    def __post_init__(self) -> None:
        lowered = frozenset(name.lower() for name in self.ignore_headers)
        # A credential named in the ignore list stays in the key: the promise that
        # tenants never share outranks configuration.
        kept = frozenset(n for n in lowered if not is_credential(n))
        object.__setattr__(self, "ignore_headers", kept)
        object.__setattr__(self, "ignore_json_fields", frozenset(self.ignore_json_fields))
        object.__setattr__(self, "_ignored", frozenset(name.encode("latin-1") for name in kept))
        prefixes = tuple(sorted(name[:-1].encode("latin-1") for name in lowered if name.endswith("*")))
        object.__setattr__(self, "_ignored_prefixes", prefixes)
        self._last_json.append((b"", b""))

    def key(self, parts: RequestParts) -> str:
        """The key of *parts*: the same as the transport makes for the same request."""
        return self.key_of(
            parts.method,
            parts.scheme,
            parts.host,
            parts.port,
            parts.target,
            [(_raw(name), _raw(value)) for name, value in parts.headers],
            parts.body,
            _raw(parts.content_type),
        )

    def keeps(self, name: bytes) -> bool:
        """Whether header *name* (lower-case bytes) takes part in the key."""
        if name in self._ignored:
            return False
        prefixes = self._ignored_prefixes
        return not (prefixes and name.startswith(prefixes) and not _is_credential_name(name))

    def key_of(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        content_type: bytes,
    ) -> str:
        """The key from a request's parts as they come: *headers* as raw bytes with
        lower-case names, and the URL's parts normalised (see ``_request``)."""
        kept = [header for header in headers if self.keeps(header[0])]
        return self.digest(method, scheme, host, port, target, kept, body, content_type)

    def digest(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        target: bytes,
        kept: list[tuple[bytes, bytes]],
        body: bytes,
        content_type: bytes,
    ) -> str:
        """The key from parts whose headers are only those that take part (see ``keeps``);
        *kept* is sorted in place."""
        kept.sort(key=_header_name)  # stable: repeated headers keep their order
        return self.digest_lines(method, scheme, host, port, target, _header_lines(kept), body, content_type)

    def digest_lines(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        target: bytes,
        lines: bytes,
        body: bytes,
        content_type: bytes,
    ) -> str:
        """``digest`` with the headers rendered already (see ``_header_lines``)."""
        # This runs for every request that may coalesce: one bytes object, one hash
        # update for it, since each call into the hash or the codec costs more than
        # its bytes.
        digest = hashlib.blake2b(
            b"%s\0%s://%s:%d\0%s\0%s\0%s"
            % (
                method.encode("utf-8", "surrogateescape"),
                scheme.encode("utf-8", "surrogateescape"),
                host.encode("utf-8", "surrogateescape"),
                port or 0,
                target,
                lines,
                self.canonical_body(body, content_type),
            ),
            digest_size=20,
        )
        return digest.hexdigest()

    def canonical_body(self, body: bytes, content_type: bytes) -> bytes:
        """The body as it takes part in the key: canonical JSON where it is JSON."""
        # find, not ``in`` (see header_lines_of): once per request.
        if not body or content_type.lower().find(b"json") < 0:
            return b"B" + body
        # The callers of one flight send one body, byte for byte, one after the other:
        # the last one's canonical form serves the next for the price of a comparison
        # (a parse and two renderings saved), and costs a body that differs about as
        # little. Only bodies of small size are kept, one at a time.
        last = self._last_json
        body_then, canonical = last[0]
        if body == body_then:
            return canonical
        canonical = self._canonical_json(body)
        if len(body) <= MAX_KEPT_BODY:
            last[0] = (body, canonical)
        return canonical

    def _canonical_json(self, body: bytes) -> bytes:
        try:
            document = orjson.loads(body)
            # A body that is orjson's own rendering of what it parsed to lost nothing on
            # the way: no member dropped as a duplicate, no number changed by parsing.
            # httpx's json= writes bodies so (compact, in their order), and so do the SDKs
            # built on it; it spares them the two scans below, which cost more than the
            # parse and both renderings together. Any other body is scanned.
            exact = orjson.dumps(document) == body
            if not exact and _has_long_number(body):
                return b"B" + body
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
        if not exact and _has_duplicate_keys(body, canonical.count(b":") + dropped.count(b":")):
            return b"B" + body
        return b"J" + canonical


#: The largest JSON body whose canonical form is kept for the next (see ``canonical_body``).
MAX_KEPT_BODY = 64 * 1024


#: A colon written as an escape inside a string (``\u003a``), counted only when its
#: backslash is not itself escaped (an even run of backslashes before it).
_ESCAPED_COLON = re.compile(rb"(?<!\\)(?:\\\\)*\\u003[aA]")


def _has_duplicate_keys(body: bytes, canonical_colons: int) -> bool:
    """Whether a JSON *body* that parsed had a key twice in one object, exactly.

    orjson keeps the last of duplicate keys, a server may keep the first, so two such
    bodies must not share. Counted, not parsed again: every member of the text has one
    colon outside strings; every colon inside a string is written plainly or as
    ``\u003a``; orjson writes each member's colon and each string's colons plainly.
    So the body's plain colons plus its escaped ones equal the canonical form's colons
    exactly when no member was lost, and exceed them when a duplicate was dropped
    (with its colon, and any colons of its value).
    """
    colons = body.count(b":")
    if b"\\" in body:  # one memchr: without a backslash, no colon hides in an escape
        escaped = body.count(b"\\u003a") + body.count(b"\\u003A")
        if escaped and b"\\\\u003" in body:
            # An escaped backslash before "u003a" is no escape: tell them apart.
            escaped = len(_ESCAPED_COLON.findall(body))
        colons += escaped
    return colons != canonical_colons


#: A header's name: what the key sorts headers by (in C, not a Python call per header).
_header_name = itemgetter(0)


def _header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The headers, one per line, told apart beyond doubt.

    A name or value holding the separators (no valid request does, and h11 refuses to
    send one) could make two different sets of headers, credentials among them, read
    the same. Two scans in C tell; such headers are written with their lengths instead.
    """
    lines = b"L" + b"".join([b"%s\0%s\n" % header for header in headers])
    if lines.count(b"\0") == lines.count(b"\n") == len(headers):
        return lines
    return b"N" + b"".join([b"%d %d %s%s" % (len(name), len(value), name, value) for name, value in headers])


def header_template(names: Iterable[bytes]) -> bytes | None:
    """What ``header_lines_of`` renders the values of headers *names* (in the key's
    order) with: ``_header_lines``'s plain form, with a ``%s`` for each value. None if
    a name holds a separator (such headers are written with their lengths)."""
    joined = b"".join(names)
    if b"\0" in joined or b"\n" in joined:
        return None
    return b"L" + b"".join([name.replace(b"%", b"%%") + b"\0%s\n" for name in names])


def header_lines_of(template: bytes, names: tuple[bytes, ...], values: tuple[bytes, ...]) -> bytes:
    """``_header_lines`` of the headers *names* with *values*, in the key's order, from
    their ``header_template``: one formatting in C for all of them, the same bytes."""
    # The names hold no separator (see header_template): only the values need looking
    # at, in two searches of memchr's speed rather than two counts over every line.
    # (find, not ``in``: on bytes, ``in`` first tries its operand as an integer, and
    # pays for the TypeError it makes and drops.)
    joined = b"".join(values)
    if joined.find(b"\0") >= 0 or joined.find(b"\n") >= 0:
        return _header_lines(list(zip(names, values, strict=True)))
    return template % values


def _raw(text: str) -> bytes:
    # As the request had it (headers are latin-1 on the wire); a part a user made up
    # with other characters still gets a key of its own.
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
