"""The heartbeat: one thread renews the leases of every flight this process leads.

A thread, not a task per flight, for three reasons: sync, asyncio and trio flights
share it; a renewal of all leases is one round trip; and an event loop that is busy
for a moment does not let its leases lapse while the process is alive. The thread
sleeps while no lease is held and stops with the backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ._errors import RedisTrouble
from ._ops import Lease, SyncOps

__all__ = ["Hold", "LeaseKeeper", "Publisher"]

logger = logging.getLogger("httpx_coalesce.redis")


#: Seconds between the keeper's ticks while a leader has records Redis has not taken
#: yet: its followers wait for them.
CATCH_UP_TICK = 0.1


class Publisher(Protocol):
    """A leader whose records the keeper writes while Redis could not take them."""

    @property
    def behind(self) -> bool:
        """Records are waiting for Redis, or the lease must be taken again."""

    def round_lost(self) -> None:
        """Redis said the round is not this leader's (any more): it lost it, or it lapsed."""

    def catch_up(self, ops: SyncOps) -> bool:
        """Write what is waiting; True once nothing more will be (drop the hold)."""

    def overdue(self) -> bool:
        """Behind for too long while Redis failed: True if it gave up (drop the hold)."""


class Hold:
    """A lease the keeper renews until released; ``lost`` once Redis said it is gone.

    A hold with a ``publisher`` is not dropped when its lease is gone: the publisher
    may take it again (see ``_lead``), and the keeper writes what it could not.
    """

    __slots__ = ("_keeper", "lease", "lost", "publisher")

    def __init__(self, keeper: LeaseKeeper, lease: Lease) -> None:
        self._keeper = keeper
        self.lease = lease
        self.lost = False
        self.publisher: Publisher | None = None

    def release(self) -> None:
        """Stop renewing (the lease was released, lost, or is left to expire)."""
        self._keeper.drop(self)


class LeaseKeeper:
    def __init__(
        self,
        ops: Callable[[], SyncOps],
        interval: float,
        lease_ms: int,
        stream_ttl_ms: int,
        on_trouble: Callable[[RedisTrouble], None],
    ) -> None:
        self._ops = ops
        self._interval = interval
        self._lease_ms = lease_ms
        self._stream_ttl_ms = stream_ttl_ms
        self._on_trouble = on_trouble
        self._condition = threading.Condition()
        self._holds: set[Hold] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        #: The last renewal failed: renew again soon, so a lease Redis lost (a restart)
        #: is taken back well within the time its followers wait for it.
        self._troubled = False

    def hold(self, lease: Lease) -> Hold:
        hold = Hold(self, lease)
        with self._condition:
            idle = not self._holds
            self._holds.add(hold)
            # A forked child inherits the thread object but not the thread.
            if not self._closed and (self._thread is None or self._pid != os.getpid()):
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="httpx-coalesce-redis-lease", daemon=True
                )
                self._thread.start()
            elif idle:
                # Only an idle keeper needs waking; a ticking one sees the hold next tick.
                self._condition.notify_all()
        return hold

    def drop(self, hold: Hold) -> None:
        with self._condition:
            self._holds.discard(hold)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            holds = list(self._holds)
            self._holds.clear()
            self._condition.notify_all()
            thread, self._thread = self._thread, None
        # A leader whose own callers are done may still owe followers elsewhere what
        # Redis could not take: one last try (a few short round trips) before the
        # process goes, rather than leave them a round with no end.
        behind = [hold.publisher for hold in holds if hold.publisher is not None and hold.publisher.behind]
        if behind and self._pid == os.getpid():
            try:
                ops = self._ops()
            except RedisTrouble:
                behind = []
            for publisher in behind:
                publisher.catch_up(ops)
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout=5.0)

    def _run(self) -> None:
        # Connect now, while the first lease is young: the first renewal may otherwise
        # have to connect in the middle of a burst, on a starved machine, within the
        # 0.25 s connect timeout.
        with contextlib.suppress(RedisTrouble):
            self._ops().ping()
        while True:
            with self._condition:
                while not self._holds and not self._closed:
                    self._condition.wait()
                # Renew on a steady tick; a hold added meanwhile was just written with
                # a full lease and needs no renewal before it. Faster while a leader is
                # behind: followers wait for what it could not write.
                tick = self._interval
                if self._troubled or any(
                    hold.publisher is not None and hold.publisher.behind for hold in self._holds
                ):
                    tick = min(tick, CATCH_UP_TICK)
                deadline = time.monotonic() + tick
                while not self._closed and (remaining := deadline - time.monotonic()) > 0:
                    self._condition.wait(remaining)
                if self._closed:
                    return
                holds = list(self._holds)
            if holds:
                self._renew(holds)

    def _renew(self, holds: list[Hold]) -> None:
        try:
            # The ops inside the try: a client that cannot be made is Redis trouble too.
            held = self._ops().renew([hold.lease for hold in holds], self._lease_ms, self._stream_ttl_ms)
        except RedisTrouble as trouble:
            # The rounds may now run out; their leaders learn it at their next append.
            self._troubled = True
            self._on_trouble(trouble)
            for hold in holds:
                if hold.publisher is not None and hold.publisher.overdue():
                    self.drop(hold)
            return
        self._troubled = False
        for hold, still in zip(holds, held, strict=True):
            if not still:
                if hold.publisher is not None:
                    # Redis lost it (restarted, failed over, evicted) or let it lapse
                    # (a blip): the leader takes its round again and writes it anew.
                    hold.publisher.round_lost()
                    continue
                hold.lost = True
                self.drop(hold)
                logger.debug("round %s lost or expired", hold.lease.round)
        ops = self._ops()
        for hold in holds:
            publisher = hold.publisher
            if publisher is not None and publisher.behind and publisher.catch_up(ops):
                self.drop(hold)
