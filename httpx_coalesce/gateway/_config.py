"""The gateway's settings: from command-line flags, each also from ``HTTPX_COALESCE_<FLAG>``.

A flag given on the command line wins over its environment variable, which wins over
the default. The settings reach worker processes as one JSON document in an
environment variable of their own (workers are separate interpreters that import the
app by name), so every worker serves exactly what the command line said.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import httpx

__all__ = ["ENV_PREFIX", "GatewayConfig", "Route", "build_parser", "config_from_args", "parse_route"]

ENV_PREFIX = "HTTPX_COALESCE_"
#: Where the parent hands the resolved settings to its workers.
CONFIG_ENV = "HTTPX_COALESCE_GATEWAY_CONFIG_JSON"
#: Set in an ASGI scope by the server when the request target was not a path
#: (``http://host/x``, ``host:443``): a request for a forward proxy, refused.
NOT_ORIGIN_FORM = "httpx_coalesce.not_origin_form"
#: Set in an ASGI scope (to None) by a server that calls back when the request's client
#: is gone: the app puts there a callable taking no argument, called at most once.
ON_CLIENT_GONE = "httpx_coalesce.on_client_gone"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class Route:
    """Requests whose path is ``prefix`` or starts with ``prefix/`` go to ``upstream``."""

    prefix: str
    upstream: str


@dataclass(frozen=True)
class GatewayConfig:
    routes: tuple[Route, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    redis: str | None = None
    redis_prefix: str = "httpx-coalesce:"
    window: float = 0.0
    max_request_body: int = 4 * 1024 * 1024
    max_flights: int = 10_000
    max_waiters: int = 100_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_connections: int = 1000
    connect_timeout: float = 10.0
    #: LLM answers take minutes; the read timeout is per chunk, not for the whole body.
    read_timeout: float = 600.0
    write_timeout: float = 60.0
    pool_timeout: float = 60.0
    # -- the client side, nginx-like (README's table of limits has nginx's beside) --
    #: Seconds for a client to send its request head (nginx: client_header_timeout 60s).
    client_header_timeout: float = 60.0
    #: Seconds between two reads of a request body (nginx: client_body_timeout 60s).
    client_body_timeout: float = 60.0
    #: Seconds an idle keep-alive connection stays open (nginx: keepalive_timeout 75s).
    keepalive_timeout: float = 75.0
    #: Seconds a client may read nothing of its response (nginx: send_timeout 60s).
    send_timeout: float = 60.0
    #: Client connections per worker (nginx: worker_connections 512, upstreams included).
    max_client_connections: int = 1024
    #: Longest request line, in bytes: 414 past it (nginx: large_client_header_buffers 8k).
    max_request_line: int = 8192
    #: Largest request head (line and headers), in bytes: 431 past it (nginx: 4 x 8k).
    max_header_bytes: int = 32768
    #: Most header fields in one request: 431 past it (Envoy: 100; nginx has no count).
    max_headers: int = 100
    #: A port of its own for /healthz and /metrics, which the proxy port then forwards
    #: like any path (None: both on the proxy port).
    metrics_port: int | None = None
    forwarded_headers: bool = True
    access_log: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewayConfig:
        data = json.loads(text)
        data["routes"] = tuple(Route(**route) for route in data["routes"])
        return cls(**data)


def parse_route(text: str) -> Route:
    """``/prefix=URL`` as a Route; ValueError if either side is not usable."""
    prefix, sep, upstream = text.partition("=")
    if not sep:
        raise ValueError(f"a route is PREFIX=URL, not {text!r}")
    return _route(prefix.strip(), upstream.strip())


def _route(prefix: str, upstream: str) -> Route:
    if not prefix.startswith("/"):
        raise ValueError(f"a route prefix starts with '/', not {prefix!r}")
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"a route prefix is a path, not {prefix!r}")
    url = httpx.URL(upstream)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"an upstream is an http:// or https:// URL, not {upstream!r}")
    if url.query or url.fragment:
        raise ValueError(f"an upstream URL has no query or fragment: {upstream!r}")
    # Stored without a trailing slash on either side: the rest of the path supplies it.
    return Route(prefix.rstrip("/") or "/", str(url).rstrip("/"))


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _env_bool(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SystemExit(f"{ENV_PREFIX}{name.upper().replace('-', '_')}: expected true or false, not {value!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {text}")
    return value


def _route_arg(text: str) -> Route:
    try:
        return parse_route(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _upstream_arg(text: str) -> Route:
    try:
        return _route("/", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# name, type, help: every flag that takes a value, in --help order. Each is a field of
# GatewayConfig (dashes as underscores), whose default is the flag's.
_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("host", str, "address to listen on"),
    ("port", int, "port to listen on"),
    ("workers", _positive_int, "worker processes; with --redis they coalesce across processes too"),
    ("redis", str, "Redis URL of the fleet backend (redis://host:6379/0): one upstream call fleet-wide"),
    ("redis-prefix", str, "prefix of every Redis key the backend writes"),
    ("window", _non_negative_float, "seconds a finished response still serves identical requests"),
    ("max-request-body", _positive_int, "largest request body accepted, in bytes (413)"),
    ("max-flights", _positive_int, "distinct requests in flight at once; past it, they pass through"),
    ("max-waiters", _positive_int, "callers of one flight; past it, they pass through"),
    ("max-body-bytes", _positive_int, "response bytes one flight holds for its callers"),
    ("max-connections", _positive_int, "upstream connections per worker"),
    ("connect-timeout", _positive_float, "seconds to connect upstream (504 past it)"),
    ("read-timeout", _positive_float, "seconds between upstream response bytes (504 past it)"),
    ("write-timeout", _positive_float, "seconds to send a request body upstream"),
    ("pool-timeout", _positive_float, "seconds to wait for a free upstream connection"),
    ("client-header-timeout", _positive_float, "seconds for a client to send its request head"),
    ("client-body-timeout", _positive_float, "seconds between two parts of a request body (408 past it)"),
    ("keepalive-timeout", _positive_float, "seconds an idle client connection stays open"),
    (
        "send-timeout",
        _positive_float,
        "seconds a client may read nothing of its response; then dropped",
    ),
    (
        "max-client-connections",
        _positive_int,
        "client connections per worker; past it idle ones are closed, then new ones get 503",
    ),
    ("max-request-line", _positive_int, "longest request line in bytes (414 past it)"),
    ("max-header-bytes", _positive_int, "largest request head in bytes (431 past it)"),
    ("max-headers", _positive_int, "most header fields in one request (431 past it)"),
    ("metrics-port", _port, "serve /healthz and /metrics on this port only, not on the proxy port"),
)
_DEFAULTS = {field.name: field.default for field in fields(GatewayConfig)}


def _field(flag: str) -> str:
    return flag.replace("-", "_")


def build_parser(prog: str = "httpx-coalesce serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "A reverse proxy that coalesces identical in-flight requests into one upstream call. "
            "Point any client's base URL at it. Every flag can also be set by an environment "
            f"variable: {ENV_PREFIX} + the flag's name in capitals, dashes as underscores "
            f"({ENV_PREFIX}UPSTREAM, {ENV_PREFIX}MAX_REQUEST_BODY...; {ENV_PREFIX}ROUTE takes "
            "several routes separated by spaces). /healthz and /metrics are the gateway's own."
        ),
    )
    parser.add_argument(
        "--upstream",
        type=_upstream_arg,
        metavar="URL",
        help="send every request to URL: the gateway's /x goes to URL/x",
    )
    parser.add_argument(
        "--route",
        type=_route_arg,
        action="append",
        metavar="PREFIX=URL",
        help="send requests under PREFIX to URL (repeatable; the longest prefix wins): /a/x goes to URL/x",
    )
    for name, kind, text in _OPTIONS:
        default = _DEFAULTS[_field(name)]
        env = _env(name)
        if env is not None:
            try:
                default = kind(env)
            except (ValueError, argparse.ArgumentTypeError) as error:
                raise SystemExit(f"{ENV_PREFIX}{name.upper().replace('-', '_')}={env!r}: {error}") from None
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=default,
            help=f"{text} (default: {default})",
        )
    forwarded = _env_bool("no-forwarded-headers")
    parser.add_argument(
        "--no-forwarded-headers",
        action="store_true",
        default=bool(forwarded),
        help="do not add X-Forwarded-For / X-Forwarded-Proto to upstream requests",
    )
    quiet = _env_bool("no-access-log")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        default=bool(quiet),
        help="do not write one line per request on standard error",
    )
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> GatewayConfig:
    """Parse flags (and environment); exits with usage on anything unusable."""
    parser = build_parser()
    args = parser.parse_args(argv)
    routes: list[Route] = list(args.route or [])
    if args.upstream is not None:
        routes.append(args.upstream)
    if not routes:
        try:
            upstream = _env("upstream")
            if upstream:
                routes.append(_route("/", upstream))
            routes.extend(parse_route(text) for text in (_env("route") or "").split())
        except ValueError as error:
            parser.error(str(error))
    if not routes:
        parser.error("nothing to proxy: give --upstream URL or --route PREFIX=URL")
    prefixes = [route.prefix for route in routes]
    if len(set(prefixes)) != len(prefixes):
        parser.error("two routes have the same prefix")
    for reserved in ("/healthz", "/metrics"):
        if reserved in prefixes:
            parser.error(f"{reserved} is the gateway's own path")
    if args.metrics_port is not None and args.metrics_port == args.port:
        parser.error("--metrics-port must differ from --port")
    # Longest prefix first: the first match is the most specific one.
    ordered = tuple(sorted(routes, key=lambda route: len(route.prefix), reverse=True))
    return GatewayConfig(
        routes=ordered,
        **{_field(name): getattr(args, _field(name)) for name, _, _ in _OPTIONS},
        forwarded_headers=not args.no_forwarded_headers,
        access_log=not args.no_access_log,
    )
