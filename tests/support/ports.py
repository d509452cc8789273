"""Loopback ports for servers the tests start, and for connections that must be refused."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now: to start a server on, or to be refused at
    (the kernel hands out each ephemeral port once before it wraps around)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
