"""Storms: thousands of concurrent callers over a few hundred keys, each cancelled,
timed out, reading slowly or leaving early, leaders included.

A storm runs in rounds. Every round has keys of its own (the round is in the path), so
"at most one upstream call per key per round" is checkable: within a round every
caller joins while the upstream holds its answers at a gate, and only then do the
cancellations and deadlines fire and the gate open. Who does what is drawn from the
seed (``HTTPX_COALESCE_SEED`` replays a run), and every outcome is checked:

- a caller that was not stopped got the answer to its own request (the body echoes its
  method, target, credentials and body), whole, in order;
- a caller that was stopped got its own cancellation, ``TimeoutError``, or its own
  ``ReadTimeout`` (whose ``request`` is its own);
- nobody hangs (each round is bounded; a caller still running at the bound is a hang);
- the upstream saw at most one call per key per round, and exactly one for a key any
  caller got an answer for;
- ``stats()`` shows no flight and no waiter afterwards.

Leaders are started first and seen in flight before followers start, so each key's
leader is known. A leader is never given a per-request httpx timeout shorter than the
round: a leader's timeouts govern the upstream call, and its timing out upstream
legitimately sends callers with other timeouts on a new flight (see test_faults).
Leaders are cancelled, hit deadlines, read slowly and leave mid-body like anyone.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from httpx_coalesce import CoalescingTransport

from ..conftest import until, until_sync
from .echo_server import EchoUpstream, echo_line

MakeTransport = Callable[..., CoalescingTransport]

#: What a caller does. "httpx_timeout" is for followers only (see the module docstring).
ACTIONS = (
    "read",
    "slow_read",
    "cancel_before_head",
    "deadline_before_head",
    "cancel_mid_body",
    "close_unread",
)
FOLLOWER_ACTIONS = (*ACTIONS, "httpx_timeout")
BEFORE_HEAD = frozenset({"cancel_before_head", "deadline_before_head", "httpx_timeout"})
SHAPES = ("buffered", "chunked", "sse")
TENANTS = (b"", b"Bearer tenant-a", b"Bearer tenant-b")
#: A round that has not ended by then has hung callers.
ROUND_LIMIT = 20.0
#: Each phase of a round (everyone joined, everyone stopped before the head) by then.
PHASE_LIMIT = 10.0
#: Timeouts (seconds) for everything that is not meant to time out: far past any round.
PATIENT = 60.0
#: A follower's own httpx timeout that runs out while the gate is closed.
IMPATIENT = 0.001


@dataclass(frozen=True)
class StormKey:
    method: str
    target: str
    authorization: bytes
    body: bytes

    def expected(self) -> bytes:
        chunks = int(self.target.rpartition("chunks=")[2].partition("&")[0])
        return echo_line(self.method, self.target, self.authorization, self.body) * chunks

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {"content-type": "application/json"}
        if self.authorization:
            headers["authorization"] = self.authorization
        return headers


@dataclass
class Caller:
    key: StormKey
    action: str
    leader: bool
    scope: anyio.CancelScope | None = None
    deadline: anyio.CancelScope | None = None
    request: Any = None
    outcome: str | None = None  # None while running: still None at the bound is a hang
    problem: str | None = None  # set when the outcome is wrong


@dataclass(frozen=True)
class StormSize:
    rounds: int
    callers: int  # per round
    keys: int  # per round


CI = StormSize(rounds=3, callers=1000, keys=100)
LONG = StormSize(rounds=10, callers=5000, keys=400)
SYNC_CI = StormSize(rounds=2, callers=150, keys=15)
SYNC_LONG = StormSize(rounds=6, callers=400, keys=40)


def plan_round(rng: random.Random, round_number: int, size: StormSize) -> list[Caller]:
    """Keys of this round only, and one caller per key (its leader) plus followers."""
    keys: list[StormKey] = []
    for number in range(size.keys):
        shape = rng.choice(SHAPES)
        chunks = rng.randint(1, 6)
        # Pairs of keys share a path and differ in body or credentials only.
        target = f"/storm/{round_number}/{number // 2}?gate=1&shape={shape}&chunks={chunks}"
        method = rng.choice(("GET", "POST"))
        body = b'{"q": %d, "round": %d}' % (number, round_number) if method == "POST" else b""
        # The second of a pair always carries credentials the first has not.
        authorization = TENANTS[1 + number % 4 // 2] if number % 2 else TENANTS[0]
        keys.append(StormKey(method, target, authorization, body))
    callers = [Caller(key, rng.choice(ACTIONS), leader=True) for key in keys]
    for _ in range(size.callers - len(keys)):
        callers.append(Caller(rng.choice(keys), rng.choice(FOLLOWER_ACTIONS), leader=False))
    return callers


def check_response(caller: Caller, response: Any, chunks: list[bytes]) -> None:
    """Whatever a caller read must be its own answer, or a prefix of it."""
    if response.request is not caller.request:
        caller.problem = "response.request is not the caller's request"
    elif response.status_code != 200:
        caller.problem = f"status {response.status_code}"
    elif not caller.key.expected().startswith(b"".join(chunks)):
        caller.problem = f"wrong bytes: {b''.join(chunks)[:120]!r}"


class Storm:
    """One storm's bookkeeping: callers, outcomes, figures."""

    def __init__(self, lib: ModuleType, echo: EchoUpstream, figures: Counter[str]) -> None:
        self.lib = lib
        self.echo = echo
        self.figures = figures
        self.finished = 0
        self.lock = threading.Lock()

    def done(self, caller: Caller, outcome: str) -> None:
        caller.outcome = outcome
        with self.lock:
            self.finished += 1

    def tally(self, callers: list[Caller], transport: CoalescingTransport) -> None:
        figures = self.figures
        figures["callers"] += len(callers)
        figures["leaders"] += sum(caller.leader for caller in callers)
        for caller in callers:
            figures[f"action:{caller.action}"] += 1
            if caller.leader and caller.action != "read":
                figures["leaders_disturbed"] += 1
        figures["cancellations_injected"] += sum(
            caller.action in ("cancel_before_head", "cancel_mid_body") for caller in callers
        )
        figures["timeouts_injected"] += sum(
            caller.action in ("deadline_before_head", "httpx_timeout") for caller in callers
        )
        figures["hangs"] += sum(caller.outcome is None for caller in callers)
        figures["wrong_responses"] += sum(caller.problem is not None for caller in callers)
        keys = {caller.key for caller in callers}
        answered = {caller.key for caller in callers if caller.outcome == "answered"}
        hits = {key: self.echo.hits_of(key.method, key.target, key.authorization, key.body) for key in keys}
        figures["upstream_calls"] += sum(hits.values())
        figures["keys"] += len(keys)
        figures["keys_over_one_call"] += sum(count > 1 for count in hits.values())
        figures["answered_keys_without_call"] += sum(hits[key] != 1 for key in answered)
        stats = transport.stats()
        figures["leaked_flights"] += stats.in_flight
        figures["leaked_waiters"] += stats.waiters

    def verify(self, callers: list[Caller]) -> None:
        hung = [caller for caller in callers if caller.outcome is None]
        wrong = [caller for caller in callers if caller.problem is not None]
        assert not hung, f"{len(hung)} hung callers, e.g. {hung[:3]}"
        assert not wrong, f"{len(wrong)} wrong outcomes, e.g. {[(c.action, c.problem) for c in wrong[:5]]}"
        expected_outcomes = {
            "read": {"answered"},
            "slow_read": {"answered"},
            "close_unread": {"answered"},
            "cancel_mid_body": {"answered", "cancelled"},  # a one-chunk body ends first
            "close_mid_body": {"answered"},
            "cancel_before_head": {"cancelled"},
            "deadline_before_head": {"deadline"},
            "httpx_timeout": {"read_timeout"},
        }
        unexpected = [c for c in callers if c.outcome not in expected_outcomes[c.action]]
        assert not unexpected, [(c.action, c.leader, c.outcome) for c in unexpected[:5]]


def storm_size(request: pytest.FixtureRequest, ci: StormSize, long: StormSize) -> StormSize:
    return long if request.node.get_closest_marker("long") else ci


# -- async ------------------------------------------------------------------------------


async def run_async_caller(storm: Storm, client: Any, caller: Caller) -> None:
    lib = storm.lib
    key = caller.key
    timeout = lib.Timeout(IMPATIENT if caller.action == "httpx_timeout" else PATIENT)
    caller.request = client.build_request(
        key.method, key.target, headers=key.headers(), content=key.body or None, timeout=timeout
    )
    outcome = "cancelled"
    scope = caller.scope = anyio.CancelScope()
    try:
        with scope:
            try:
                with anyio.fail_after(ROUND_LIMIT * 3) as deadline:
                    caller.deadline = deadline
                    response = await client.send(caller.request, stream=True)
            except TimeoutError:
                outcome = "deadline"
                return
            except lib.ReadTimeout as error:
                outcome = "read_timeout"
                if error.request is not caller.request:
                    caller.problem = "ReadTimeout.request is not the caller's request"
                return
            chunks: list[bytes] = []
            try:
                if caller.action == "close_unread":
                    pass
                elif caller.action == "read":
                    chunks.append(await response.aread())
                else:
                    async for chunk in response.aiter_raw():
                        chunks.append(chunk)
                        if caller.action == "cancel_mid_body":
                            scope.cancel()
                        await anyio.lowlevel.checkpoint()
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                check_response(caller, response, chunks)
            if (
                caller.action not in ("close_unread", "cancel_mid_body")
                and b"".join(chunks) != caller.key.expected()
            ):
                caller.problem = f"incomplete body: {b''.join(chunks)[:120]!r}"
            outcome = "answered"
    except Exception as error:  # anything else is a wrong outcome, reported with the rest
        outcome = f"error {type(error).__name__}"
        caller.problem = f"{type(error).__name__}: {error}"
    finally:
        storm.done(caller, outcome)


async def phase(name: str, reached: Callable[[], bool], transport: CoalescingTransport) -> None:
    try:
        await until(reached, PHASE_LIMIT)
    except TimeoutError:
        pytest.fail(f"phase not reached: {name}; {transport.stats()}")


async def run_async_round(
    storm: Storm, client: Any, transport: CoalescingTransport, callers: list[Caller]
) -> None:
    leaders = [caller for caller in callers if caller.leader]
    followers = [caller for caller in callers if not caller.leader]
    storm.finished = 0
    storm.echo.close_gate()
    with anyio.move_on_after(ROUND_LIMIT):
        async with anyio.create_task_group() as group:
            for caller in leaders:
                group.start_soon(run_async_caller, storm, client, caller)
            await phase("leaders in flight", lambda: transport.stats().in_flight == len(leaders), transport)
            for caller in followers:
                group.start_soon(run_async_caller, storm, client, caller)
            # Everyone has joined, or timed out alone (httpx timeouts of followers).
            timed_out = sum(caller.action == "httpx_timeout" for caller in followers)
            await phase(
                "everyone joined",
                lambda: (
                    transport.stats().waiters == len(callers) - storm.finished and storm.finished == timed_out
                ),
                transport,
            )
            # Before the head: cancellations and deadlines, leaders included.
            for caller in callers:
                if caller.action == "cancel_before_head":
                    assert caller.scope is not None
                    caller.scope.cancel()
                elif caller.action == "deadline_before_head":
                    assert caller.deadline is not None
                    caller.deadline.deadline = anyio.current_time()
            stopped = sum(caller.action in BEFORE_HEAD for caller in callers)
            await phase("stopped before the head", lambda: storm.finished == stopped, transport)
            storm.echo.open_gate()
    storm.echo.open_gate()


def async_storm(
    lib: ModuleType,
    echo: EchoUpstream,
    figures: Counter[str],
    seed: int,
    size: StormSize,
    transport: CoalescingTransport,
) -> Callable[[], Any]:
    async def storm_body() -> None:
        rng = random.Random(seed)
        storm = Storm(lib, echo, figures)
        async with lib.AsyncClient(base_url=echo.url, transport=transport, timeout=PATIENT) as client:
            for round_number in range(size.rounds):
                callers = plan_round(rng, round_number, size)
                await run_async_round(storm, client, transport, callers)
                storm.tally(callers, transport)
                storm.verify(callers)
        assert figures["keys_over_one_call"] == 0, figures
        assert figures["answered_keys_without_call"] == 0, figures
        assert (figures["leaked_flights"], figures["leaked_waiters"]) == (0, 0), figures

    return storm_body


def make_async_inner(lib: ModuleType) -> Any:
    # Every leader of a round holds a connection at the gate at once.
    return lib.AsyncHTTPTransport(limits=lib.Limits(max_connections=None, max_keepalive_connections=500))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "size",
    [
        pytest.param(CI, id="ci"),
        pytest.param(LONG, id="long", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
async def test_storm_of_cancelled_timed_out_and_slow_callers_gets_everyone_their_own_answer(
    size: StormSize,
    echo: EchoUpstream,
    figures: Counter[str],
    seed: int,
    make_transport: MakeTransport,
) -> None:
    transport = make_transport(transport=make_async_inner(httpx))
    await async_storm(httpx, echo, figures, seed, size, transport)()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [pytest.param(StormSize(1, 600, 60), id="ci")])
async def test_storm_through_httpx2_clients_gets_everyone_their_own_answer(
    size: StormSize,
    echo: EchoUpstream,
    figures: Counter[str],
    seed: int,
    make_transport: MakeTransport,
) -> None:
    httpx2 = pytest.importorskip("httpx2")
    transport = make_transport(transport=make_async_inner(httpx2))
    await async_storm(httpx2, echo, figures, seed, size, transport)()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "size",
    [
        pytest.param(StormSize(1, 600, 60), id="ci"),
        pytest.param(StormSize(4, 3000, 300), id="long", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
async def test_storm_with_the_redis_backend_gets_everyone_their_own_answer(
    size: StormSize,
    echo: EchoUpstream,
    figures: Counter[str],
    seed: int,
    make_transport: MakeTransport,
    redis_url: str,
    redis_prefix: str,
) -> None:
    from httpx_coalesce.redis import RedisBackend

    backend = RedisBackend.from_url(redis_url, prefix=redis_prefix)
    transport = make_transport(transport=make_async_inner(httpx), backend=backend)
    try:
        await async_storm(httpx, echo, figures, seed, size, transport)()
    finally:
        await transport.aclose()


# -- threads ----------------------------------------------------------------------------

SYNC_ACTIONS = ("read", "slow_read", "close_mid_body", "close_unread")
SYNC_FOLLOWER_ACTIONS = (*SYNC_ACTIONS, "httpx_timeout")


def run_sync_caller(storm: Storm, client: Any, caller: Caller) -> None:
    lib = storm.lib
    key = caller.key
    timeout = lib.Timeout(IMPATIENT if caller.action == "httpx_timeout" else PATIENT)
    caller.request = client.build_request(
        key.method, key.target, headers=key.headers(), content=key.body or None, timeout=timeout
    )
    outcome = "cancelled"
    try:
        try:
            response = client.send(caller.request, stream=True)
        except lib.ReadTimeout as error:
            outcome = "read_timeout"
            if error.request is not caller.request:
                caller.problem = "ReadTimeout.request is not the caller's request"
            return
        chunks: list[bytes] = []
        try:
            if caller.action == "read":
                chunks.append(response.read())
            elif caller.action != "close_unread":
                for chunk in response.iter_raw():
                    chunks.append(chunk)
                    if caller.action == "close_mid_body":
                        break
                    threading.Event().wait(0)  # a slow reader yields between chunks
        finally:
            response.close()
            check_response(caller, response, chunks)
        if caller.action in ("read", "slow_read") and b"".join(chunks) != caller.key.expected():
            caller.problem = f"incomplete body: {b''.join(chunks)[:120]!r}"
        outcome = "answered"
    except Exception as error:
        outcome = f"error {type(error).__name__}"
        caller.problem = f"{type(error).__name__}: {error}"
    finally:
        storm.done(caller, outcome)


def run_sync_round(
    storm: Storm, client: Any, transport: CoalescingTransport, pool: ThreadPoolExecutor, callers: list[Caller]
) -> None:
    storm.finished = 0
    storm.echo.close_gate()
    try:
        leaders = [caller for caller in callers if caller.leader]
        futures = [pool.submit(run_sync_caller, storm, client, caller) for caller in leaders]
        until_sync(lambda: transport.stats().in_flight == len(leaders), PHASE_LIMIT)
        futures += [
            pool.submit(run_sync_caller, storm, client, caller) for caller in callers if not caller.leader
        ]
        timed_out = sum(caller.action == "httpx_timeout" for caller in callers)
        until_sync(
            lambda: (
                transport.stats().waiters == len(callers) - storm.finished and storm.finished == timed_out
            ),
            PHASE_LIMIT,
        )
    finally:
        storm.echo.open_gate()
    for future in futures:
        future.result(timeout=ROUND_LIMIT)


def plan_sync_round(rng: random.Random, round_number: int, size: StormSize) -> list[Caller]:
    callers = plan_round(rng, round_number, size)
    for caller in callers:
        caller.action = rng.choice(SYNC_ACTIONS if caller.leader else SYNC_FOLLOWER_ACTIONS)
    return callers


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(SYNC_CI, id="ci"),
        pytest.param(SYNC_LONG, id="long", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
def test_threaded_storm_of_early_leavers_and_slow_readers_gets_everyone_their_own_answer(
    lib: ModuleType,
    size: StormSize,
    echo: EchoUpstream,
    figures: Counter[str],
    seed: int,
    make_transport: MakeTransport,
) -> None:
    rng = random.Random(seed)
    storm = Storm(lib, echo, figures)
    inner = lib.HTTPTransport(limits=lib.Limits(max_connections=None, max_keepalive_connections=200))
    transport = make_transport(transport=inner)
    with lib.Client(base_url=echo.url, transport=transport, timeout=PATIENT) as client:
        with ThreadPoolExecutor(size.callers) as pool:
            for round_number in range(size.rounds):
                callers = plan_sync_round(rng, round_number, size)
                run_sync_round(storm, client, transport, pool, callers)
                storm.tally(callers, transport)
                storm.verify(callers)
    assert figures["keys_over_one_call"] == 0, figures
    assert figures["answered_keys_without_call"] == 0, figures
    assert (figures["leaked_flights"], figures["leaked_waiters"]) == (0, 0), figures
