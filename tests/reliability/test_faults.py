"""Upstream faults, from a hand-written loopback server that misbehaves on demand.

For each fault, N concurrent callers share one flight (the inner transport holds the
leader's call until all have joined), and each must get its own clear exception: a
distinct object, tied to its own request, of the very type a lone plain client gets
against the same fault. Nothing may hang (every test is bounded), and the next flight
for the same request works once the server is healthy again.

Each fault's outcome is the server's doing alone, never a race with a clock: only the
fault that never answers runs under a read timeout. (Under one, a reset or a close that
a loaded machine delays past it turns a ReadError into a ReadTimeout for one client and
not the other.)
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest

from httpx_coalesce import CoalescingTransport

from ..conftest import until
from ..support.ports import free_port
from .loopback import LoopbackServer, RawRequest, reset, send_response

pytestmark = pytest.mark.anyio

MakeTransport = Callable[..., CoalescingTransport]

CALLERS = 20
#: The read timeout the callers (and the lone client) run under where the server never
#: answers; under any other fault they have none, so what they get is the fault's.
READ_TIMEOUT = 0.3
#: No fault test may take longer than this.
BOUND = 15.0


class FaultServer:
    """Misbehaves as ``mode`` says, for every request, until told to be healthy."""

    def __init__(self, port: int = 0) -> None:
        self.mode = "healthy"
        self.open_streams = 0
        self.hits: Counter[str] = Counter()
        self.server = LoopbackServer(self._handle, port)

    @property
    def url(self) -> str:
        return self.server.url

    async def _handle(
        self, request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self.hits[self.mode] += 1
        mode = self.mode
        if mode == "healthy":
            send_response(writer, b"healthy " + request.target.encode(), content_type=b"text/plain")
            await writer.drain()
            return True
        if mode == "reset_before_headers":
            reset(writer)
        elif mode == "reset_mid_body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
            await writer.drain()
            reset(writer)
        elif mode == "slow_headers":
            # Nothing at all, until the client gives up and closes.
            await reader.read()
        elif mode == "malformed":
            writer.write(b"SPAM / NOT-HTTP\r\n\x00\x01\r\n\r\n")
            await writer.drain()
        elif mode == "short_body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"y" * 50)
            await writer.drain()
        elif mode == "never_ending":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
            self.open_streams += 1
            try:
                while True:
                    writer.write(b"6\r\nchunk\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.001)
            except ConnectionError:
                pass
            finally:
                self.open_streams -= 1
        return False


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.server:
        yield server


class GatedTransport:
    """The real transport, behind a gate: the leader's call waits until all joined."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = anyio.Event()
        self.calls = 0

    async def handle_async_request(self, request: Any) -> Any:
        self.calls += 1
        await self.gate.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def read_timeout(fault: str) -> float | None:
    """The read timeout for *fault*: a clock only where the server never answers."""
    return READ_TIMEOUT if fault == "slow_headers" else None


async def lone_error(lib: ModuleType, url: str, read: float | None = READ_TIMEOUT) -> BaseException:
    """What a plain client, with no coalescing, gets from the fault."""
    with anyio.fail_after(BOUND):  # outside the try: a hang is no answer
        async with lib.AsyncClient(timeout=lib.Timeout(5.0, read=read)) as lone:
            try:
                await lone.get(url)
            except Exception as error:
                return error
    raise AssertionError("the fault did not fail a lone client")


async def coalesced_errors(
    lib: ModuleType,
    url: str,
    make_transport: MakeTransport,
    figures: Counter[str],
    read: float | None = READ_TIMEOUT,
) -> tuple[list[Any], list[Any], CoalescingTransport, GatedTransport]:
    """N callers of one flight against the fault; their requests and what each got."""
    gated = GatedTransport(lib.AsyncHTTPTransport())
    transport = make_transport(transport=gated)
    client = lib.AsyncClient(transport=transport, timeout=lib.Timeout(5.0, read=read))
    requests = [client.build_request("GET", url) for _ in range(CALLERS)]
    outcomes: list[Any] = [None] * CALLERS

    async def call(index: int) -> None:
        try:
            outcomes[index] = await client.send(requests[index])
        except Exception as error:
            outcomes[index] = error

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:
            for index in range(CALLERS):
                group.start_soon(call, index)
            await until(lambda: transport.stats().waiters == CALLERS)
            gated.gate.set()
    figures["callers"] += CALLERS
    figures["faults_injected"] += 1
    figures["hangs"] += sum(outcome is None for outcome in outcomes)
    return requests, outcomes, transport, gated


FAULTS = ["reset_before_headers", "reset_mid_body", "slow_headers", "malformed", "short_body"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_every_caller_of_a_failed_flight_gets_its_own_error_like_a_lone_client(
    fault: str,
    lib: ModuleType,
    fault_server: FaultServer,
    make_transport: MakeTransport,
    figures: Counter[str],
) -> None:
    url = fault_server.url + f"/{fault}"
    fault_server.mode = fault
    lone = await lone_error(lib, url, read_timeout(fault))
    expected = type(lone)
    requests, outcomes, transport, gated = await coalesced_errors(
        lib, url, make_transport, figures, read_timeout(fault)
    )

    assert gated.calls == 1
    assert [type(outcome) for outcome in outcomes] == [expected] * CALLERS, outcomes
    assert len({id(outcome) for outcome in outcomes}) == CALLERS
    assert all(outcome.request is request for outcome, request in zip(outcomes, requests, strict=True))
    # As clear as the lone client's (whose message some faults leave empty), and never
    # carrying another caller's traceback.
    assert [str(outcome) for outcome in outcomes] == [str(lone)] * CALLERS
    assert len({id(outcome.__traceback__) for outcome in outcomes}) == CALLERS
    figures["wrong_responses"] += sum(type(outcome) is not expected for outcome in outcomes)

    fault_server.mode = "healthy"
    async with lib.AsyncClient(transport=transport) as client:
        with anyio.fail_after(BOUND):
            response = await client.get(url)
    assert response.status_code == 200
    assert response.content == f"healthy /{fault}".encode()
    assert gated.calls == 2


async def test_refused_connections_reach_every_caller_as_their_own_connect_error(
    lib: ModuleType, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/refused"
    expected = type(await lone_error(lib, url))
    assert issubclass(expected, lib.ConnectError)
    requests, outcomes, transport, gated = await coalesced_errors(lib, url, make_transport, figures)

    assert gated.calls == 1
    assert [type(outcome) for outcome in outcomes] == [expected] * CALLERS
    assert len({id(outcome) for outcome in outcomes}) == CALLERS
    assert all(outcome.request is request for outcome, request in zip(outcomes, requests, strict=True))

    # The server comes up where nothing listened: the next flight works.
    server = FaultServer(port)
    with server.server:
        async with lib.AsyncClient(transport=transport) as client:
            with anyio.fail_after(BOUND):
                response = await client.get(url)
    assert response.content == b"healthy /refused"


async def test_a_never_ending_stream_stops_once_every_caller_has_gone(
    lib: ModuleType,
    fault_server: FaultServer,
    make_transport: MakeTransport,
    figures: Counter[str],
    seed: int,
) -> None:
    rng = random.Random(seed)
    fault_server.mode = "never_ending"
    url = fault_server.url + "/forever"
    gated = GatedTransport(lib.AsyncHTTPTransport())
    transport = make_transport(transport=gated)
    read: list[int] = []

    async with lib.AsyncClient(transport=transport, timeout=lib.Timeout(5.0, read=READ_TIMEOUT)) as client:

        async def reader(chunks: int, deadline: float | None) -> None:
            async with client.stream("GET", url) as response:
                got = 0
                # Either it leaves after some chunks, or a deadline of its own ends it.
                with anyio.move_on_after(deadline):
                    async for chunk in response.aiter_raw():
                        assert set(chunk.split(b"\n")) <= {b"chunk", b""}
                        got += 1
                        if got == chunks:
                            break
                read.append(got)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                for index in range(CALLERS):
                    group.start_soon(reader, rng.randint(1, 30), 0.05 if index % 4 == 0 else None)
                await until(lambda: transport.stats().waiters == CALLERS)
                gated.gate.set()
            await until(lambda: fault_server.open_streams == 0)

    figures["callers"] += CALLERS
    figures["faults_injected"] += 1
    assert len(read) == CALLERS
    assert transport.stats().cancelled_flights == 1
    assert gated.calls == 1

    fault_server.mode = "healthy"
    async with lib.AsyncClient(transport=transport) as client:
        with anyio.fail_after(BOUND):
            response = await client.get(url)
    assert response.content == b"healthy /forever"


async def test_a_leader_timing_out_upstream_does_not_fail_followers_with_more_patience(
    lib: ModuleType, fault_server: FaultServer, make_transport: MakeTransport, figures: Counter[str]
) -> None:
    """The leader's read timeout runs out on slow headers; followers whose own timeouts
    are longer did not time out themselves, so they make a new flight (and, the server
    being healthy by then, get their answer) rather than inherit the leader's error."""
    fault_server.mode = "slow_headers"
    url = fault_server.url + "/slow"
    gated = GatedTransport(lib.AsyncHTTPTransport())
    transport = make_transport(transport=gated)
    outcomes: list[Any] = [None] * CALLERS

    async with lib.AsyncClient(transport=transport, timeout=lib.Timeout(5.0)) as client:

        async def call(index: int) -> None:
            timeout = lib.Timeout(5.0, read=READ_TIMEOUT) if index == 0 else lib.Timeout(5.0)
            try:
                outcomes[index] = await client.get(url, timeout=timeout)
            except Exception as error:
                outcomes[index] = error

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(call, 0)
                await until(lambda: transport.stats().in_flight == 1)
                for index in range(1, CALLERS):
                    group.start_soon(call, index)
                await until(lambda: transport.stats().waiters == CALLERS)
                gated.gate.set()
                await until(lambda: fault_server.hits["slow_headers"] == 1)
                fault_server.mode = "healthy"

    figures["callers"] += CALLERS
    figures["faults_injected"] += 1
    assert isinstance(outcomes[0], lib.ReadTimeout)
    assert [outcome.content for outcome in outcomes[1:]] == [b"healthy /slow"] * (CALLERS - 1)
    assert gated.calls == 2
