"""The request side: may this request coalesce, and what are its key's parts?

A request body that is not already in memory is never read here: the request reaches
the inner transport as the caller made it (see ``body_in_memory``).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from ._key import RequestParts, header_lines_of, header_template

__all__ = [
    "OPT_OUT_VALUES",
    "HeaderRoles",
    "Inspection",
    "body_in_memory",
    "inspect",
    "request_parts",
    "url_parts",
]

#: Values of the opt-out header that turn coalescing off for one request.
OPT_OUT_VALUES = frozenset({"off", "false", "0", "no", "skip", "bypass"})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


# What a header is to the transport (a bit set): it takes part in the key, it is the
# opt-out header, or one the inspection reads.
_KEY = 1
_OPT_OUT = 2
_CONTENT_TYPE = 4
_HOST = 8
_UPGRADE = 16

#: Spellings of header names learnt per transport at most; past it, the roles are
#: learnt again (a client sending made-up names cannot grow memory without end).
MAX_LEARNT_NAMES = 1024
#: Header plans (see ``_Plan``) kept per transport at most; past it, they are made again.
MAX_PLANS = 256


class _Plan:
    """What the header-by-header loop of ``inspect`` would do with a request whose header
    names are these, in this order, worked out once for all such requests.

    A client sends the same names in the same order with every request: the plan picks
    the values the key takes, in the key's order, in C (``pick``), and renders them with
    one formatting (``template``). Only names make a plan, never values: a plan holds
    no credential.
    """

    __slots__ = ("content_type", "host", "names", "pick", "template")

    def __init__(
        self, names: tuple[bytes, ...], kept: list[int], template: bytes, content_type: int, host: int
    ) -> None:
        #: The lower-cased names the key takes, in the key's order.
        self.names = names
        #: The values of those headers, in that order, from all the request's values.
        self.pick: Callable[[tuple[bytes, ...]], tuple[bytes, ...]] = _picker(kept)
        #: Renders those values as the key's header lines (see ``_key.header_lines_of``).
        self.template = template
        #: Where the request's values hold its content type (the last one), or -1.
        self.content_type = content_type
        #: Where ``pick``'s values hold the Host header, to be normalised, or -1.
        self.host = host


def _picker(indices: list[int]) -> Callable[[tuple[bytes, ...]], tuple[bytes, ...]]:
    if len(indices) > 1:
        return itemgetter(*indices)
    if indices:
        index = indices[0]
        return lambda values: (values[index],)  # itemgetter of one gives no tuple
    return lambda values: ()


#: The plan for names that the header-by-header loop must see: an opt-out or Upgrade
#: header, two Host headers, or a name that holds a separator of the key's lines.
_LOOP = object()


class HeaderRoles:
    """Each header name as requests spell it, lower-cased, with its role, learnt once.

    A client sends the same few spellings (``Content-Type``, ``Accept``...) with every
    request: one dict look-up per header replaces lower-casing it and testing it
    against the opt-out header, the headers read here and the key's ignore rules.
    """

    __slots__ = ("_in_key", "_learnt", "_opt_out", "_plans", "filters", "opt_out_header")

    def __init__(self, opt_out_header: str, in_key: Callable[[bytes], bool] | None = None) -> None:
        #: The opt-out header's name, lower-case.
        self.opt_out_header = opt_out_header
        self._opt_out = opt_out_header.encode("latin-1")
        #: Which headers the default key takes (None: every header, for a key function
        #: of the user's, which sees them all).
        self._in_key = in_key
        #: Whether inspections leave out the headers the key ignores.
        self.filters = in_key is not None
        self._learnt: dict[bytes, tuple[bytes, int]] = {}
        #: Plans by the tuple of a request's raw header names (only if ``filters``).
        self._plans: dict[tuple[bytes, ...], object] = {}

    def of(self, raw_name: bytes) -> tuple[bytes, int]:
        known = self._learnt.get(raw_name)
        if known is None:
            known = self._learn(raw_name)
        return known

    def _learn(self, raw_name: bytes) -> tuple[bytes, int]:
        name = raw_name.lower()
        if name == self._opt_out:
            role = _OPT_OUT
        else:
            role = _KEY if self._in_key is None or self._in_key(name) else 0
            if name == b"content-type":
                role |= _CONTENT_TYPE
            elif name == b"host":
                role |= _HOST
            elif name == b"upgrade":
                role |= _UPGRADE
        learnt = self._learnt
        if len(learnt) >= MAX_LEARNT_NAMES:
            learnt.clear()
        known = learnt[raw_name] = (name, role)
        return known

    def _plan(self, raw_names: tuple[bytes, ...]) -> object:
        """The plan for requests whose header names are *raw_names*, or ``_LOOP``."""
        plan: object = _LOOP
        kept: list[tuple[bytes, int]] = []
        content_type = -1
        hosts = 0
        for index, raw_name in enumerate(raw_names):
            name, role = self.of(raw_name)
            if role & (_OPT_OUT | _UPGRADE):
                break
            if role & _CONTENT_TYPE:
                content_type = index
            if role & _HOST:
                hosts += 1
            if role & _KEY:
                kept.append((name, index))
        else:
            if hosts <= 1:
                kept.sort(key=_first)  # stable, as the key sorts its headers
                names = tuple(name for name, _ in kept)
                host = names.index(b"host") if hosts and b"host" in names else -1
                template = header_template(names)
                if template is not None:
                    plan = _Plan(names, [index for _, index in kept], template, content_type, host)
        plans = self._plans
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plans[raw_names] = plan
        return plan


_first = itemgetter(0)


class Inspection:
    """What one pass over a request's headers tells: may it coalesce, and its key's headers
    (raw bytes, names lower-cased; only those the key takes if ``filtered``).

    A plan's inspection has its headers in the key's order and rendered for it already
    (``lines``); the list of them is only made if asked for.
    """

    __slots__ = ("_headers", "_plan", "_values", "content_type", "filtered", "lines", "reason")

    def __init__(
        self,
        reason: str | None,
        headers: list[tuple[bytes, bytes]] | None,
        content_type: bytes,
        filtered: bool,
        plan: _Plan | None = None,
        values: tuple[bytes, ...] = (),
        lines: bytes | None = None,
    ) -> None:
        self.reason = reason
        self._headers = headers
        self.content_type = content_type
        self.filtered = filtered
        self._plan = plan
        self._values = values
        #: The key's header lines (see ``_key._header_lines``), if a plan made them.
        self.lines = lines

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._headers
        if headers is None:
            assert self._plan is not None
            headers = self._headers = list(zip(self._plan.names, self._values, strict=True))
        return headers


def inspect(request: Any, methods: frozenset[str], roles: HeaderRoles) -> Inspection:
    """Read the headers once (httpx's Headers API rescans them on every lookup).

    Strips the opt-out header: it is ours, not the server's, and never goes upstream.
    Works on the raw bytes: decoding every header of every request costs more than
    everything else done with them here.
    """
    raw = request.headers.raw
    if roles.filters and raw:
        names, values = zip(*raw, strict=True)
        plan = roles._plans.get(names)
        if plan is None:
            plan = roles._plan(names)
        if plan is not _LOOP:
            assert isinstance(plan, _Plan)
            return _planned(request, methods, roles, plan, values)
    headers: list[tuple[bytes, bytes]] = []
    opt_out: bytes | None = None
    upgrade = False
    content_type = b""
    learnt = roles._learnt
    for raw_name, value in raw:
        known = learnt.get(raw_name)
        name, role = roles._learn(raw_name) if known is None else known
        if role == _KEY:  # the usual header: nothing to look at
            headers.append((name, value))
            continue
        if not role:  # one the key ignores
            continue
        if role & _OPT_OUT:
            opt_out = value
            continue
        if role & _CONTENT_TYPE:
            content_type = value
        elif role & _HOST:
            value = _host(value, request.url.scheme)
        elif role & _UPGRADE:
            upgrade = True
        if role & _KEY:
            headers.append((name, value))
    if opt_out is not None:
        del request.headers[roles.opt_out_header]
    method = request.method
    reason = None
    if (
        opt_out is not None and opt_out.decode("latin-1").strip().lower() in OPT_OUT_VALUES
    ) or request.extensions.get("coalesce") is False:
        reason = "opt_out"
    elif method == "CONNECT" or upgrade:
        reason = "upgrade"
    elif method not in methods:
        reason = "method"
    return Inspection(reason, headers, content_type, roles.filters)


def _planned(
    request: Any, methods: frozenset[str], roles: HeaderRoles, plan: _Plan, values: tuple[bytes, ...]
) -> Inspection:
    """``inspect`` by *plan*: what the header-by-header loop gives, without the loop."""
    picked = plan.pick(values)
    if plan.host >= 0:
        normalised = list(picked)
        normalised[plan.host] = _host(normalised[plan.host], request.url.scheme)
        picked = tuple(normalised)
    method = request.method
    reason = None
    if request.extensions.get("coalesce") is False:
        reason = "opt_out"
    elif method == "CONNECT":
        reason = "upgrade"
    elif method not in methods:
        reason = "method"
    content_type = values[plan.content_type] if plan.content_type >= 0 else b""
    lines = header_lines_of(plan.template, plan.names, picked) if reason is None else None
    return Inspection(reason, None, content_type, True, plan, picked, lines)


def url_parts(request: Any) -> tuple[str, str, int | None, bytes]:
    """Scheme, host, port (None for the scheme's default) and target of the request."""
    url = request.url
    scheme = url.scheme.lower()
    port = url.port
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, url.host.lower(), port, url.raw_path


def request_parts(request: Any, inspection: Inspection, body: bytes) -> RequestParts:
    """What a key function of the user's sees: headers decoded, names lower-case."""
    scheme, host, port, target = url_parts(request)
    return RequestParts(
        method=request.method,
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        headers=tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in inspection.headers
        ),
        body=body,
        content_type=inspection.content_type.decode("latin-1"),
    )


def _host(value: bytes, scheme: str) -> bytes:
    # httpx copies the URL's authority into Host as written; the same host must key the same.
    host = value.lower()
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default is not None and host.endswith(b":%d" % default):
        host = host[: -len(str(default)) - 1]
    return host


def body_in_memory(request: Any) -> bytes | None:
    """The request's body if it is in memory (bytes, text, JSON, form data, or a stream
    the caller already read); None for one that is still a stream (a generator, a file,
    multipart files), which is left as it is."""
    # httpx and httpx2 keep a body that is in memory as ``_content``; ``.content``
    # raises for one that is not, and an exception per request costs more.
    return getattr(request, "_content", None)
