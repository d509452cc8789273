"""RedisBackend: one upstream call for identical requests across processes and machines.

Each process still coalesces locally first; only a local flight's leader comes here.
It competes for the flight's lease in Redis. The winner sends the request upstream and
publishes the response, live, on a Redis stream named for its round; the others read
that stream and hand the response to their own local flights. Redis trouble never
fails a request: the request goes upstream from this process instead (see docs/fleet.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._backend import AsyncSend, SyncSend
from .._library import Library
from .._limits import Limits
from .._stats import Counters
from .._telemetry import error_type
from ._breaker import Breaker
from ._clients import AsyncClientFactory, Clients, SyncClientFactory, check_client, quiet_handshake
from ._context import Context
from ._errors import RedisTrouble
from ._follow import Moved, Verdict, follow_async, follow_sync, response_of
from ._keeper import LeaseKeeper
from ._lead import Lead, lead_async, lead_sync
from ._names import FlightKeys, new_token
from ._ops import Lease
from ._options import check_options
from ._options import sentinel_url as _sentinel_url
from ._patience import BACKSTOP
from ._records import decode_window
from ._settings import DEFAULT_PREFIX, Settings

__all__ = ["RedisBackend"]

logger = logging.getLogger("httpx_coalesce.redis")

#: Rounds one request waits on before it goes upstream on its own: a leader that dies
#: is replaced, but a fleet whose leaders keep dying does not hold callers.
MAX_ROUNDS = 4

#: The extra time a blocking read's socket waits past the block itself: Redis times
#: blocked reads out on its own clock tick (100 ms at the default ``hz 10``).
_READ_MARGIN = 1.0


class RedisBackend:
    """Fleet-wide coalescing through Redis.

    ::

        transport = CoalescingTransport(backend=RedisBackend.from_url("redis://localhost:6379/0"))

    ``client`` serves sync requests, the lease heartbeat and trio; ``async_client``, if
    given, makes one ``redis.asyncio`` client per asyncio event loop (without it,
    asyncio requests run ``client`` in worker threads). Followers block on
    ``read_client`` / ``async_read_client`` if given, for a whole heartbeat, so these
    need a socket timeout longer than that; otherwise they block on the command clients
    for at most half their socket timeout. Clients passed in are not closed by
    :meth:`close`; clients made by the factories, or by :meth:`from_url`, are.

    Give clients a short ``socket_timeout`` and no retries (as :meth:`from_url` does):
    a slow Redis then costs a request that much before it goes upstream on its own.

    How it behaves:

    * Redis trouble (unreachable, slower than the socket timeout, or answering what no
      leader of ours wrote) never fails a request: a new flight goes upstream from this
      process, still coalesced locally, and Redis is left alone for ``backoff`` seconds.
    * A flight already under way rides a blip out (Redis slow, paused, restarted,
      failed over, unreachable for a while): followers keep their place and resume
      once Redis answers; the leader keeps what Redis could not take and writes it
      then, taking back its round (and the lease, if nobody else took it) and writing
      it again from the head if Redis lost it (chunks carry their offset). A round
      whose lease went to another process meanwhile still ends for its followers.
    * With the transport's ``window``, a finished answer stays in Redis that long for
      late callers in any process, under the local window's rules.
    * A leader that dies is replaced by one of its followers once its round's
      heartbeat runs out;
      the others follow the new leader. A follower that already handed out a streamed
      response cannot start over: its readers get the client library's ``ReadError``
      (``ReadTimeout`` after ``follower_wait`` seconds of silence). A buffered response
      is handed out only whole, so its followers never see that.
    * Upstream errors reach followers as the same class of the caller's library.
    * On trio, where ``redis.asyncio`` does not run, the sync client runs in worker
      threads (at most 256 at once per event loop).
    * Counters in ``transport.stats()``: ``redis_led`` (rounds this process led for the
      fleet), ``redis_followed`` (responses or upstream errors it took from another
      process), ``redis_errors`` (Redis failures, and flights that skipped Redis during
      the back-off), ``redis_window_hits`` (flights answered from the fleet window).

    A backend serves one transport: :meth:`bind` ties it to that transport's counters.
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        async_client: AsyncClientFactory | None = None,
        read_client: redis.Redis | redis.cluster.RedisCluster | None = None,
        async_read_client: AsyncClientFactory | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 5.0,
        heartbeat: float | None = None,
        follower_wait: float | None = None,
        stream_ttl: float = 30.0,
        backoff: float = 1.0,
    ) -> None:
        for given in (client, read_client):
            if given is not None:
                check_client(given)
        self._setup(
            lambda: client,
            None if read_client is None else lambda: read_client,
            async_client,
            async_read_client,
            Settings(
                prefix=prefix,
                lease=lease,
                heartbeat=heartbeat,
                follower_wait=follower_wait,
                stream_ttl=stream_ttl,
                backoff=backoff,
            ),
            owned=False,
        )

    def _setup(
        self,
        client: SyncClientFactory,
        read_client: SyncClientFactory | None,
        async_client: AsyncClientFactory | None,
        async_read_client: AsyncClientFactory | None,
        settings: Settings,
        owned: bool,
        timeout: float | None = None,
    ) -> None:
        self._settings = settings
        self._clients = Clients(
            client,
            read_client,
            async_client,
            async_read_client,
            settings.interval,
            settings.prefix,
            owned,
            timeout,
        )
        self._breaker = Breaker(settings.backoff)
        self._keeper = LeaseKeeper(
            self._clients.sync_ops, settings.interval, settings.lease_ms, settings.stream_ttl_ms, self._report
        )
        self._context: Context | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        socket_timeout: float = 0.25,
        socket_connect_timeout: float = 0.25,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 5.0,
        heartbeat: float | None = None,
        follower_wait: float | None = None,
        stream_ttl: float = 30.0,
        backoff: float = 1.0,
        **redis_options: Any,
    ) -> RedisBackend:
        """A backend with its own clients for *url*.

        ``redis://``, ``rediss://``, ``unix://``; ``valkey://`` and ``valkeys://`` (the
        same protocol); with ``cluster=True``, any node of a Redis Cluster (the others
        are discovered); ``redis+sentinel://host:port[,host:port...]/service[/db]`` (or
        ``valkey+sentinel://``), see :meth:`from_sentinel`.

        ``redis_options`` go to redis-py's clients (``password``, ``ssl_ca_certs``,
        ``client_name``...); an option they do not take is refused here. Retries are
        off unless given: a retried command would stretch the short timeout that keeps
        a failing Redis cheap. No connection is made here: an unreachable Redis costs
        the first flights a fall-back, never an exception.
        """
        settings = Settings(
            prefix=prefix,
            lease=lease,
            heartbeat=heartbeat,
            follower_wait=follower_wait,
            stream_ttl=stream_ttl,
            backoff=backoff,
        )
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme in ("redis+sentinel", "valkey+sentinel", "rediss+sentinel", "valkeys+sentinel"):
            if cluster:
                raise ValueError("a sentinel URL names a service, not a cluster: drop cluster=True")
            sentinels, service, db = _sentinel_url(rest)
            if scheme.startswith(("rediss", "valkeys")):
                redis_options.setdefault("ssl", True)
            if db is not None:
                redis_options.setdefault("db", db)
            return cls._sentinel(
                sentinels, service, socket_timeout, socket_connect_timeout, None, settings, redis_options
            )
        url = {"valkey": "redis", "valkeys": "rediss"}.get(scheme, scheme) + sep + rest
        check_options(redis_options, cluster=cluster)
        # A malformed URL is refused now, not at each request (redis-py leaves it untyped).
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        options = quiet_handshake({"retry": Retry(NoBackoff(), 0), **redis_options})
        sync_class: Any = redis.cluster.RedisCluster if cluster else redis.Redis
        async_class: Any = redis.asyncio.cluster.RedisCluster if cluster else redis.asyncio.Redis
        timeouts = _Timeouts(settings, socket_timeout, socket_connect_timeout)

        def maker(of: Any, timeout: float, connect: float) -> Callable[[], Any]:
            return lambda: of.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect, **options)

        backend = cls.__new__(cls)
        backend._setup(
            maker(sync_class, socket_timeout, socket_connect_timeout),
            maker(sync_class, timeouts.read(socket_timeout), socket_connect_timeout),
            maker(async_class, BACKSTOP, BACKSTOP),
            maker(async_class, BACKSTOP, BACKSTOP),
            settings,
            owned=True,
            timeout=timeouts.patient,
        )
        return backend

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service: str,
        *,
        socket_timeout: float = 0.25,
        socket_connect_timeout: float = 0.25,
        sentinel_options: dict[str, Any] | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 5.0,
        heartbeat: float | None = None,
        follower_wait: float | None = None,
        stream_ttl: float = 30.0,
        backoff: float = 1.0,
        **redis_options: Any,
    ) -> RedisBackend:
        """A backend on the master that Redis Sentinel names for *service*.

        *sentinels* are ``(host, port)`` pairs; any that answers will do. The clients
        ask the sentinels for the master whenever they connect, so a failover costs the
        flights in progress a fall-back, and the next ones find the new master.
        ``sentinel_options`` go to the connections to the sentinels (``password``...);
        ``redis_options`` to those to the master, as in :meth:`from_url`.
        """
        settings = Settings(
            prefix=prefix,
            lease=lease,
            heartbeat=heartbeat,
            follower_wait=follower_wait,
            stream_ttl=stream_ttl,
            backoff=backoff,
        )
        return cls._sentinel(
            list(sentinels),
            service,
            socket_timeout,
            socket_connect_timeout,
            sentinel_options,
            settings,
            redis_options,
        )

    @classmethod
    def _sentinel(
        cls,
        sentinels: list[tuple[str, int]],
        service: str,
        socket_timeout: float,
        socket_connect_timeout: float,
        sentinel_options: dict[str, Any] | None,
        settings: Settings,
        redis_options: dict[str, Any],
    ) -> RedisBackend:
        if not sentinels or not all(
            isinstance(host, str) and isinstance(port, int) for host, port in sentinels
        ):
            raise ValueError("sentinels must be (host, port) pairs, at least one")
        if not service:
            raise ValueError("the sentinel service (master name) must not be empty")
        check_options(redis_options, cluster=False)
        check_options(sentinel_options or {}, cluster=False)
        to_sentinels = quiet_handshake(
            {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_connect_timeout,
                **(sentinel_options or {}),
            }
        )
        options = quiet_handshake({"retry": Retry(NoBackoff(), 0), **redis_options})
        timeouts = _Timeouts(settings, socket_timeout, socket_connect_timeout)

        def maker(module: Any, timeout: float, connect: float) -> Callable[[], Any]:
            def make() -> Any:
                watch = module.Sentinel(sentinels, sentinel_kwargs=to_sentinels, **to_sentinels)
                return watch.master_for(
                    service, socket_timeout=timeout, socket_connect_timeout=connect, **options
                )

            return make

        backend = cls.__new__(cls)
        backend._setup(
            maker(redis.sentinel, socket_timeout, socket_connect_timeout),
            maker(redis.sentinel, timeouts.read(socket_timeout), socket_connect_timeout),
            maker(redis.asyncio.sentinel, BACKSTOP, BACKSTOP),
            maker(redis.asyncio.sentinel, BACKSTOP, BACKSTOP),
            settings,
            owned=True,
            timeout=timeouts.patient,
        )
        return backend

    # -- the Backend protocol --------------------------------------------------------

    def bind(self, counters: Counters, limits: Limits, window: float = 0.0) -> None:
        """*window*: the transport's ``window``; a finished response stays in Redis that
        long, for late callers in any process (the fleet window)."""
        if self._context is not None:
            raise ValueError("this RedisBackend already serves a transport; make one per transport")
        self._context = Context(self._settings, limits, counters, self._report, window)

    # send_async and send_sync differ only in how they block: the election is written
    # once, in _elect, which does no I/O; they carry out what it asks with ops of their
    # own kind. Redis trouble in a window read or an acquire sends the request upstream
    # (following deals with its own).

    async def send_async(self, key: str, request: Any, library: Library, send: AsyncSend) -> Any:
        context = self._usable()
        if context is None:
            return await send(request)
        try:
            ops = self._clients.async_ops()
        except RedisTrouble as trouble:
            self._report(trouble)
            return await send(request)
        election = self._elect(context, key, request, library)
        step = next(election)
        result: Any
        while True:
            if isinstance(step, _Follow):
                step = election.send(await follow_async(context, ops, step.lease, request, library))
                continue
            try:
                if isinstance(step, _Acquire):
                    result = await ops.acquire(step.lease, self._settings.lease_ms)
                elif isinstance(step, _WindowGet):
                    result = await ops.window_get(step.key)
                else:
                    break
            except RedisTrouble as trouble:
                self._report(trouble)
                return await send(request)
            step = election.send(result)
        if isinstance(step, Lead):
            return await lead_async(step, ops, request, library, send)
        if isinstance(step, _Answer):
            return step.response
        return await send(request)

    def send_sync(self, key: str, request: Any, library: Library, send: SyncSend) -> Any:
        context = self._usable()
        if context is None:
            return send(request)
        try:
            ops = self._clients.sync_ops()
        except RedisTrouble as trouble:
            self._report(trouble)
            return send(request)
        election = self._elect(context, key, request, library)
        step = next(election)
        result: Any
        while True:
            if isinstance(step, _Follow):
                step = election.send(follow_sync(context, ops, step.lease, request, library))
                continue
            try:
                if isinstance(step, _Acquire):
                    result = ops.acquire(step.lease, self._settings.lease_ms)
                elif isinstance(step, _WindowGet):
                    result = ops.window_get(step.key)
                else:
                    break
            except RedisTrouble as trouble:
                self._report(trouble)
                return send(request)
            step = election.send(result)
        if isinstance(step, Lead):
            return lead_sync(step, ops, request, library, send)
        if isinstance(step, _Answer):
            return step.response
        return send(request)

    def _elect(
        self, context: Context, key: str, request: Any, library: Library
    ) -> Generator[_Step, Any, None]:
        """A flight's way through its key's rounds: yields what to do next (a read, to be
        sent what it returned) until it yields the outcome (a Lead, an _Answer, or
        Verdict.ALONE: go upstream from this process)."""
        keys = FlightKeys(self._settings.prefix, key)
        if context.window > 0:
            kept = yield _WindowGet(keys.window)
            answer = None if kept is None else _from_window(context, kept, request, library)
            if answer is not None:
                yield _Answer(answer)
                return
        following: Lease | None = None
        replaced: Lease | None = None
        for _ in range(MAX_ROUNDS):
            if following is None:
                lease = _new_lease(keys)
                holder = yield _Acquire(lease)
                self._succeeded()
                if holder is None:
                    context.counters.add("redis_led")
                    yield Lead(context, self._keeper.hold(lease), replaced, keys.window)
                    return
                following = _lease_of(keys, holder)
            followed = yield _Follow(following)
            if followed is Verdict.ALONE:
                break
            following, replaced, done = _next_round(keys, following, followed)
            if done:
                yield _Answer(followed)
                return
        yield Verdict.ALONE

    async def aclose(self) -> None:
        self._closed = True
        self._keeper.close()
        await self._clients.aclose()

    def close(self) -> None:
        self._closed = True
        self._keeper.close()
        self._clients.close()

    # -- internals -------------------------------------------------------------------

    def _usable(self) -> Context | None:
        """The context, if this flight may use Redis; None to go upstream directly."""
        context = self._context
        if context is None or self._closed:
            return None
        if not self._breaker.allow():
            # Counted: a flight that could not coalesce fleet-wide because of Redis.
            context.counters.backend_error("backoff")
            return None
        return context

    def _report(self, trouble: RedisTrouble) -> None:
        if self._context is not None:
            self._context.counters.backend_error(error_type(trouble))
        if self._breaker.failed():
            logger.warning(
                "Redis failed (%s); coalescing within this process only, retrying in %.1f s",
                trouble,
                self._settings.backoff,
            )
        else:
            logger.debug("Redis failed again: %s", trouble)

    def _succeeded(self) -> None:
        if not self._breaker.closed:
            self._breaker.succeeded()
            logger.info("Redis is back; coalescing across processes again")


@dataclass(frozen=True, slots=True)
class _WindowGet:
    """Read the fleet window's entry of *key* (send its value)."""

    key: str


@dataclass(frozen=True, slots=True)
class _Acquire:
    """Compete for *lease* (send the holder's token, None if this process won it)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class _Follow:
    """Follow the round of *lease* (send what following it came to)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class _Answer:
    """The outcome: *response* answers the flight."""

    response: Any


_Step = _WindowGet | _Acquire | _Follow | _Answer | Lead | Verdict


class _Timeouts:
    """The timeouts of the clients a backend makes itself.

    Sync clients time out on the socket, which a busy process does not delay. asyncio
    clients time out on event-loop timers, which a burst does (see ``_patience``): their
    own timeouts are only a backstop, and the ops keep the patient one.
    """

    def __init__(self, settings: Settings, socket_timeout: float, connect_timeout: float) -> None:
        self._interval = settings.interval
        #: A command's timeout in time the loop was free: connecting included, so the
        #: longer of the two.
        self.patient = max(socket_timeout, connect_timeout)

    def read(self, timeout: float) -> float:
        """A read client's socket timeout: a whole heartbeat's block, and then some."""
        return self._interval + timeout + _READ_MARGIN


def _from_window(context: Context, kept: bytes, request: Any, library: Library) -> Any:
    """A response another process finished within the window; the local flight fans
    it out (and keeps it in the local window too)."""
    try:
        head, body = decode_window(kept)
    except RedisTrouble as trouble:
        # Not ours to read: the flight goes on as if the window were empty.
        context.report(trouble)
        return None
    context.counters.add("redis_window_hits")
    return response_of(library, head, library.module.ByteStream(body), request)


def _new_lease(keys: FlightKeys) -> Lease:
    token = new_token()
    return Lease(keys.lease, keys.stream(token), token, keys.round(token))


def _lease_of(keys: FlightKeys, holder: str) -> Lease:
    return Lease(keys.lease, keys.stream(holder), holder, keys.round(holder))


def _next_round(keys: FlightKeys, following: Lease, followed: Any) -> tuple[Lease | None, Lease | None, bool]:
    """After following *following*: whom to follow next (None: elect), the round a
    new leader replaces, and whether *followed* is the answer."""
    if isinstance(followed, Moved):
        return _lease_of(keys, followed.token), None, False
    if followed is Verdict.REELECT:
        return None, following, False
    return None, None, True
