"""Bursts across processes do not become connection storms (the CI-sized rows of
benchmarks/fleet_burst.py; the full 8 x 500 x 10 and 8 x 2,000 x 1 run there).

Each row: worker processes fire all their requests at once, distinct keys, several
callers per key, against an upstream that answers after a second, through a private
redis-server (its statistics are the test's own). Pass: one upstream call per key (a
process that lags past the answer may lead one more round: at most 1 % extra), no flight
fails open, no request fails, no connection is refused, and connections stay bounded.
"""

from __future__ import annotations

import pytest

from benchmarks.fleet_burst import EVENTS, run_burst
from httpx_coalesce.redis._ops import COMMANDS

from .conftest import StartRedis

PROCESSES = 4
KEYS = 100
CALLERS = 5


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_a_burst_of_distinct_keys_makes_one_call_per_key_with_bounded_connections(
    streamed: bool, redis_server: StartRedis
) -> None:
    server = redis_server()
    # Warm processes (connected before the burst) and 1 s Redis timeouts: on a shared
    # 2-core machine a burst can starve an event loop past the 0.25 s defaults, which is
    # the machine, not Redis. benchmarks/fleet_burst.py measures cold, with the defaults.
    row = run_burst(
        server.url, processes=PROCESSES, keys=KEYS, callers=CALLERS, streamed=streamed, warm=True, timeout=1.0
    )
    assert (row["failed"], row["fail_open"], row["refused"]) == (0, 0, 0), row
    assert KEYS <= row["upstream_calls"] <= KEYS * 1.01, row
    # Per process: the command clients of its event loop and of its threads (the lease
    # keeper), and one blocked reader: far below one per flight.
    assert row["connections_opened"] <= PROCESSES * (2 * COMMANDS + 1), row
    # Round trips: about one per process for a buffered flight (elections batched), and
    # one per record more for a streamed one.
    assert row["round_trips_per_flight"] < PROCESSES * (2 + (EVENTS + 2 if streamed else 0)), row
