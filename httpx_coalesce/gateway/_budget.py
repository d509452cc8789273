"""How many descriptors client and upstream connections may take in one worker.

A process out of descriptors cannot accept anything, not even a health check: asyncio
stops accepting for a second, and every request fails. So the gateway first raises its
soft descriptor limit to the hard one, then, if the client and upstream connection
limits together do not fit under it with room for its own files (listeners, logs,
Redis, the metrics port), lowers both in proportion. Clients past the client limit are
then refused by the gateway itself (see ``_protocol``), while descriptors remain.
"""

from __future__ import annotations

import contextlib
import functools
import logging

__all__ = ["RESERVED_DESCRIPTORS", "connection_budget", "raise_descriptor_limit"]

logger = logging.getLogger("httpx_coalesce.gateway")

#: Descriptors kept for the process's own files, whatever the connection limits say.
RESERVED_DESCRIPTORS = 64


def _descriptor_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_descriptor_limit() -> None:
    """Soft limit up to the hard one, as nginx's worker_rlimit_nofile lets one do."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # Some platforms refuse an infinite hard limit as the soft one: then it stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@functools.cache
def connection_budget(clients: int, upstreams: int) -> tuple[int, int]:
    """(client connections, upstream connections) that fit under the descriptor limit."""
    limit = _descriptor_limit()
    if limit is None:
        return clients, upstreams
    room = max(2, limit - RESERVED_DESCRIPTORS)
    if clients + upstreams <= room:
        return clients, upstreams
    fitted_clients = max(1, room * clients // (clients + upstreams))
    fitted_upstreams = max(1, room - fitted_clients)
    logger.warning(
        "%d descriptors: at most %d client and %d upstream connections (asked: %d and %d)",
        limit,
        fitted_clients,
        fitted_upstreams,
        clients,
        upstreams,
    )
    return fitted_clients, fitted_upstreams
