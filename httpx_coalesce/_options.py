"""The checks CoalescingTransport runs on its arguments, before it stores any of them.

A wrong argument found at the first request surfaces as an unrelated error far from
its cause (an AttributeError deep in a client), or not at all (``methods="POST"`` is a
collection of four one-letter methods, and silently turns coalescing off). Each check
here refuses one kind of argument with a message that says what was expected and what
was given: TypeError for a wrong type, ValueError for a wrong value. They are pure:
they read their argument and return it in the form the transport keeps.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlsplit

from ._backend import Backend
from ._key import CREDENTIAL_HEADER_PREFIXES, CREDENTIAL_HEADERS, KeyFunction, is_credential
from ._library import NAMES
from ._limits import Limits
from ._telemetry import available as otel_available
from ._telemetry import is_meter_provider

__all__ = [
    "check_backend",
    "check_header_name",
    "check_ignore_headers",
    "check_key",
    "check_limits",
    "check_meter_provider",
    "check_methods",
    "check_names",
    "check_opt_out_header",
    "check_telemetry",
    "check_transport",
    "check_window",
    "kept_credentials",
    "warn_kept_credentials",
]

# RFC 9110 section 5.6.2: a token is one or more tchar. Header names and methods are tokens.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TCHARS = "letters, digits and !#$%&'*+-.^_`|~"

# The Backend protocol's methods, read from the protocol so the two cannot drift apart.
_BACKEND_METHODS = tuple(name for name, value in vars(Backend).items() if callable(value) and name[0] != "_")


def _given(value: object) -> str:
    """What was given, for a message: its type and its repr, shortened."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_type_name(value)} {text}"


def _type_name(value: object) -> str:
    kind = value if isinstance(value, type) else type(value)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    # Name a type by the package users import it from where it exports it (httpx.Client,
    # not httpx._client.Client), else by its module.
    package = module.partition(".")[0]
    if getattr(sys.modules.get(package), kind.__qualname__, None) is kind:
        return f"{package}.{kind.__qualname__}"
    return f"{module}.{kind.__qualname__}"


def check_names(value: object, what: str) -> frozenset[str]:
    """A collection of str, such as a set, list or tuple, as a frozenset.

    A bare str is refused: it is a collection of its letters, so ``methods="POST"``
    would mean the methods P, O, S and T.
    """
    if isinstance(value, str):
        raise TypeError(
            f"{what} must be a collection of names, such as a set or list of str; got a bare "
            f"{_given(value)}, which would be read letter by letter (for one name, write "
            f"{what}={{{value!r}}})"
        )
    if isinstance(value, bytes | bytearray):
        raise TypeError(f"{what} must be a collection of str names, not {_given(value)}")
    if not isinstance(value, Iterable):
        raise TypeError(
            f"{what} must be a collection of str names (a set, list or tuple), not {_given(value)}"
        )
    names = list(cast(Iterable[object], value))
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must hold only str names; got {_given(name)}")
    return frozenset(cast(list[str], names))


def check_header_name(value: object, what: str) -> str:
    """An HTTP field name: an RFC 9110 token (one or more of letters, digits and
    ``!#$%&'*+-.^_`|~``)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a header name (str), not {_given(value)}")
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{what} must be a header name, one or more of {_TCHARS} (RFC 9110 token), not {value!r}"
        )
    return value


def check_methods(value: object) -> frozenset[str]:
    """Method names, upper-cased: ``{"post"}`` means POST, as HTTP methods are
    upper-case by convention and httpx upper-cases the methods it sends."""
    methods = check_names(value, "methods")
    for method in methods:
        if not _TOKEN.fullmatch(method):
            raise ValueError(
                f"methods must hold method names, one or more of {_TCHARS} (RFC 9110 token); got {method!r}"
            )
    return frozenset(method.upper() for method in methods)


def check_ignore_headers(value: object) -> frozenset[str]:
    """Header names, each a token; a trailing ``*`` stands for every name starting
    with what comes before it, and is the only place a ``*`` means that."""
    names = check_names(value, "ignore_headers")
    for name in names:
        check_header_name(name, "each name in ignore_headers")
        if "*" in name[:-1]:
            raise ValueError(
                f"ignore_headers: only a trailing '*' is a wildcard (as in 'x-stainless-*'); got {name!r}"
            )
    return names


def kept_credentials(names: Iterable[str]) -> list[str]:
    """The names among *names* that name or cover a credential header, which stays in
    the key whatever the ignore list says, each with what it covers."""
    credentials = sorted(CREDENTIAL_HEADERS) + [prefix + "*" for prefix in CREDENTIAL_HEADER_PREFIXES]
    found = []
    for name in sorted(names):
        lowered = name.lower()
        if not lowered.endswith("*"):
            if is_credential(lowered):
                found.append(repr(name))
            continue
        prefix = lowered[:-1]
        if is_credential(prefix):
            found.append(repr(name))
            continue
        covered = [credential for credential in credentials if credential.startswith(prefix)]
        if covered:
            found.append(f"{name!r} (covers {', '.join(covered)})")
    return found


def warn_kept_credentials(names: Iterable[str], stacklevel: int) -> None:
    """Warn that credentials named in the ignore list stay in the key.

    *stacklevel* counts as for :func:`warnings.warn` called here: 1 is this function.

    Not an error: the list may be shared with other code or written before a header
    became a credential, and keeping the credential is always the safe reading. But a
    user who asked for it must learn that it did not happen.
    """
    found = kept_credentials(names)
    if found:
        warnings.warn(
            f"ignore_headers names credential headers, which always stay in the key (a response "
            f"is never shared between callers whose credentials differ): {'; '.join(found)}",
            UserWarning,
            stacklevel=stacklevel,
        )


def check_opt_out_header(value: object) -> str:
    """The opt-out header's name, lower-cased. Never a credential: the transport strips
    the opt-out header from every request, and would strip the credential with it."""
    name = check_header_name(value, "opt_out_header").lower()
    if is_credential(name):
        raise ValueError(
            f"opt_out_header must not be a credential header: it is removed from every request "
            f"before sending; got {value!r}"
        )
    return name


def _client_library(value: object) -> str | None:
    """Which library (httpx or httpx2) *value* is a client of, if it is one.

    Told from its classes' names and modules, not from the libraries themselves: this
    package never imports httpx (see ``_library``), and whatever is in
    ``sys.modules["httpx"]`` now may not be what made *value*.
    """
    for cls in type(value).__mro__:
        library = cls.__module__.partition(".")[0]
        if library in NAMES and cls.__name__ in ("Client", "AsyncClient"):
            return library
    return None


def check_transport(value: object) -> Any:
    """An inner transport (sync, async or both), or None.

    Of either library, whatever the client's: clients duck-type their transport (they
    only call ``handle_request``/``handle_async_request``), and so does this one.
    """
    if value is None:
        return None
    if isinstance(value, type):
        raise TypeError(
            f"transport must be a transport instance, not the class {_type_name(value)}: "
            f"call it, as in transport={_type_name(value)}()"
        )
    library = _client_library(value)
    if library is not None:
        transport = "AsyncHTTPTransport" if "Async" in type(value).__name__ else "HTTPTransport"
        raise TypeError(
            f"transport must be a transport, not a client ({_type_name(value)}): pass the transport "
            f"the client would use, e.g. transport={library}.{transport}(), and give the "
            f"CoalescingTransport to the client: {library}.{type(value).__name__}"
            f"(transport=CoalescingTransport(...))"
        )
    if not (
        callable(getattr(value, "handle_request", None))
        or callable(getattr(value, "handle_async_request", None))
    ):
        raise TypeError(
            "transport must be an httpx or httpx2 transport, with handle_request (sync) or "
            f"handle_async_request (async), such as httpx.AsyncHTTPTransport(); got {_given(value)}"
        )
    return value


def _redacted(text: str) -> str:
    """*text*, with a URL's user and password hidden: a message must not leak them."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<a str>"
    if "@" not in parts.netloc:
        return repr(text)
    netloc = f"***@{host or ''}" + (f":{port}" if port is not None else "")
    return repr(parts._replace(netloc=netloc).geturl())


def check_backend(value: object) -> Backend | None:
    """A fleet backend (the :class:`Backend` protocol), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"backend must be a Backend, not a str ({_redacted(value)}); for Redis, pass "
            "RedisBackend.from_url(url) (from httpx_coalesce.redis import RedisBackend)"
        )
    if isinstance(value, type):
        raise TypeError(
            f"backend must be a Backend instance, not the class {_type_name(value)}: "
            "make one, e.g. RedisBackend.from_url(url)"
        )
    module = type(value).__module__
    if module == "redis" or module.startswith("redis."):
        hint = (
            "RedisBackend.from_url(url)"
            if module.startswith("redis.asyncio")
            else "RedisBackend(client) or RedisBackend.from_url(url)"
        )
        raise TypeError(
            f"backend must be a Backend, not a Redis client ({_type_name(value)}): pass {hint} "
            "(from httpx_coalesce.redis import RedisBackend)"
        )
    missing = [name for name in _BACKEND_METHODS if not callable(getattr(value, name, None))]
    if missing or not isinstance(value, Backend):
        raise TypeError(
            f"backend must implement the Backend protocol (methods {', '.join(_BACKEND_METHODS)}), "
            f"such as httpx_coalesce.redis.RedisBackend; {_given(value)} lacks {', '.join(missing)}"
        )
    return value


def check_key(value: object) -> KeyFunction | None:
    """A key function, ``key(parts: RequestParts) -> str``, or None."""
    if value is None:
        return None
    if not callable(value):
        hint = ""
        if callable(getattr(value, "key", None)):
            # A KeyRules (or alike) given whole: its key method is what was meant.
            hint = f" (to key by a {type(value).__name__}, pass its method: key=rules.key)"
        raise TypeError(f"key must be a function key(parts: RequestParts) -> str, not {_given(value)}{hint}")
    return cast(KeyFunction, value)


def check_window(value: object) -> float:
    """Seconds a finished response serves late arrivals: a finite number >= 0."""
    # bool is an int to Python, but window=True is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"window must be a number of seconds (int or float), not {_given(value)}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"window must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def check_limits(value: object) -> Limits:
    """A :class:`Limits`, or None for the defaults."""
    if value is None:
        return Limits()
    if isinstance(value, Limits):
        return value
    library = type(value).__module__.partition(".")[0]
    if library in ("httpx", "httpx2") and type(value).__name__ == "Limits":
        raise TypeError(
            f"limits must be an httpx_coalesce.Limits, not {_type_name(value)}: those are "
            "connection-pool limits; give them to the inner transport, as in "
            f"transport={library}.AsyncHTTPTransport(limits=...)"
        )
    hint = " (write limits=Limits(**...) to make one from a dict)" if isinstance(value, dict) else ""
    raise TypeError(f"limits must be an httpx_coalesce.Limits, not {_given(value)}{hint}")


def check_meter_provider(value: object) -> Any:
    """An OpenTelemetry ``MeterProvider``, or None for the global one."""
    if value is None:
        return None
    if is_meter_provider(value):
        return value
    if not otel_available():
        raise TypeError(
            f"meter_provider needs OpenTelemetry, which is not installed (pip install "
            f'"httpx-coalesce[otel]"); got {_given(value)}'
        )
    hint = ""
    if callable(getattr(value, "create_counter", None)):
        hint = " (that is a Meter; pass the MeterProvider it came from)"
    elif callable(getattr(value, "get_tracer", None)):
        hint = " (that is a TracerProvider: spans need no argument, the caller's current span is used)"
    elif callable(getattr(value, "collect", None)) or callable(getattr(value, "get_metrics_data", None)):
        hint = " (that is a metric reader: pass MeterProvider(metric_readers=[reader]))"
    raise TypeError(
        f"meter_provider must be an opentelemetry.metrics.MeterProvider, such as "
        f"opentelemetry.sdk.metrics.MeterProvider(metric_readers=[...]), not {_given(value)}{hint}"
    )


def check_telemetry(value: object, meter_provider: object) -> bool:
    """Whether to use OpenTelemetry at all: True (metrics and span notes when it is
    installed) or False (never a call into it)."""
    if not isinstance(value, bool):
        raise TypeError(f"telemetry must be True or False, not {_given(value)}")
    if not value and meter_provider is not None:
        raise ValueError(
            "telemetry=False turns every OpenTelemetry call off, metrics included: it cannot "
            f"go with a meter_provider (got {_given(meter_provider)}); drop one of them"
        )
    return value
