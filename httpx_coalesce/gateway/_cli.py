"""``httpx-coalesce serve``: parse the settings, then run the gateway's ASGI server.

Importing this module needs nothing beyond the core package: the server (the
``gateway`` extra) is imported only once the settings are parsed, so ``--help`` works,
and a missing extra is reported as such, without a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._budget import raise_descriptor_limit
from ._config import CONFIG_ENV, GatewayConfig, config_from_args

__all__ = ["main", "serve"]

_APP = "httpx_coalesce.gateway._app:app_from_env"


def _log_config() -> dict[str, Any]:
    """Every log line on standard error; the access log as one plain line per request."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "access": {"format": "%(asctime)s %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "httpx_coalesce": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "httpx_coalesce.gateway": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "httpx_coalesce.gateway.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _http_protocol() -> Any:
    if not _installed("httptools"):
        return "h11"
    from ._protocol import GatewayProtocol

    return GatewayProtocol


def serve(config: GatewayConfig) -> int:
    """Run the gateway until interrupted."""
    try:
        import uvicorn
    except ImportError as error:
        print(f"serve needs its extra: pip install 'httpx-coalesce[gateway]' ({error})", file=sys.stderr)
        return 2
    # Workers are fresh interpreters that import the app by name; they find their
    # settings here.
    os.environ[CONFIG_ENV] = config.to_json()
    # Descriptors bound how many connections can be open at once: take what the
    # system allows (workers inherit it), then fit the connection limits under it.
    raise_descriptor_limit()
    uvicorn.run(
        _APP,
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        # The fastest pair measured (benchmarks/gateway_servers.py); the pure-Python
        # ones where these cannot be installed.
        loop="uvloop" if _installed("uvloop") else "asyncio",
        # Bounds a client's time, head and connections (see _protocol); h11 (without
        # httptools) gives the app the target as sent, which it refuses unless a path.
        http=_http_protocol(),
        lifespan="on",
        log_config=_log_config(),
        # The gateway writes its own access line, with the coalescing outcome.
        access_log=False,
        # The upstream's Server and Date pass through; the gateway adds none of its own.
        server_header=False,
        date_header=False,
        # The client address is the peer's: a client's own X-Forwarded-For is not
        # trusted to say who it is (it is kept, and ours appended, upstream).
        proxy_headers=False,
        # uvicorn types it int, and uses it as call_later's delay: a float works.
        timeout_keep_alive=config.keepalive_timeout,  # type: ignore[arg-type]
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return serve(config_from_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
