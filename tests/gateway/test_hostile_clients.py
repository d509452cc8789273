"""Clients that never finish, never read, or never stop sending: each is bounded as nginx
bounds it, and the other clients, and /healthz, go on.

One gateway with short timeouts and small head limits (flags) serves most tests here;
raw sockets play the clients, since no HTTP library sends what these send.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ..support.ports import free_port
from .conftest import GatewayProcess, wait_for
from .hostile import HostileUpstream, raw_request, status_of

#: The guarded gateway's flags, and what the tests below expect of them.
HEAD_TIMEOUT = 1.0
LIMITS = (
    "--client-header-timeout",
    str(HEAD_TIMEOUT),
    "--client-body-timeout",
    "1",
    "--keepalive-timeout",
    "1",
    "--send-timeout",
    "2",
    "--max-request-line",
    "2048",
    "--max-header-bytes",
    "8192",
    "--max-headers",
    "30",
)


@pytest.fixture(scope="module")
def guarded(hostile_upstream: HostileUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess("--route", f"/h={hostile_upstream.url}/base", "--no-access-log", *LIMITS)
    yield process
    process.close()


def connect(gateway: GatewayProcess, timeout: float = 15.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the gateway writes until it closes (a reset counts as closed)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- timeouts -------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(guarded: GatewayProcess) -> None:
    # Pass: the gateway closes it (recv sees the end) well before the socket's 15 s.
    with connect(guarded) as sock:
        assert read_until_closed(sock) == b""


def test_half_a_head_gets_408_after_the_head_timeout(
    guarded: GatewayProcess, hostile: HostileUpstream
) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /h/echo/slow HTTP/1.1\r\nhost: x\r\nx-slow: ")
        assert status_of(read_until_closed(sock)) == 408
    assert hostile.seen() == []


def test_a_tls_client_hello_on_the_plain_port_is_closed(guarded: GatewayProcess) -> None:
    hello = bytes.fromhex("160301020001") + b"\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
    with connect(guarded) as sock:
        sock.sendall(hello)
        answer = read_until_closed(sock)
    assert answer == b"" or status_of(answer) in (400, 408)


def test_a_body_that_stops_coming_gets_408_and_never_reaches_the_upstream(
    guarded: GatewayProcess, hostile: HostileUpstream
) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"POST /h/echo/body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        assert status_of(read_until_closed(sock)) == 408
    assert hostile.seen() == []


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(guarded: GatewayProcess) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_until_closed(sock)
    assert status_of(answer) == 200
    assert answer.endswith(b"ok\n")


# -- head limits ----------------------------------------------------------------------


def test_a_request_line_past_the_limit_gets_414(guarded: GatewayProcess, hostile: HostileUpstream) -> None:
    answer = raw_request(guarded.port, b"GET /h/echo/" + b"a" * 4096 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert status_of(answer) == 414
    assert hostile.seen() == []


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"x-n%d: 1\r\n" % n for n in range(40)),  # too many fields
        b"x-big: " + b"v" * 9000 + b"\r\n",  # one field too large
        b"".join(b"x-n%d: %s\r\n" % (n, b"v" * 1000) for n in range(12)),  # too large together
    ],
    ids=["count", "one-field", "total"],
)
def test_a_head_past_its_limits_gets_431(
    guarded: GatewayProcess, hostile: HostileUpstream, headers: bytes
) -> None:
    answer = raw_request(guarded.port, b"GET /h/echo/x HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) == 431
    assert hostile.seen() == []


def test_an_endless_header_is_cut_and_memory_stays_bounded(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    # Default limits: the head is cut at the request line plus 32 KiB of headers.
    gateway = start_gateway("--upstream", "http://127.0.0.1:9", "--no-access-log")
    before = gateway.rss()
    sent = 0
    answer = b""
    with connect(gateway) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: ")
        piece = b"v" * 65536
        try:
            while sent < 200 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # cut: the gateway closed the connection
        answer = read_until_closed(sock)
    # Pass: cut long before 200 MB (the kernel's buffers take a few MB), answered
    # 431 or 400 where the answer was not lost to the reset, memory grew < 50 MB.
    assert sent < 50 * 1024 * 1024
    if answer:
        assert status_of(answer) in (400, 431)
    assert gateway.rss() - before < 50 * 1024 * 1024
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200


# -- trailers, framing, methods -------------------------------------------------------


def test_request_trailers_never_reach_the_upstream(guarded: GatewayProcess, hostile: HostileUpstream) -> None:
    answer = raw_request(
        guarded.port,
        b"POST /h/echo/trailers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer real\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n"
        b"authorization: Bearer from-trailer\r\nx-user-id: 7\r\nx-forwarded-for: 6.6.6.6\r\n"
        b"connection: authorization\r\n\r\n",
    )
    assert status_of(answer) == 200
    [request] = hostile.seen()
    # Pass: the head is the client's own, whole; nothing of the trailer anywhere.
    headers = dict(request.headers)
    assert headers["authorization"] == "Bearer real"
    assert "x-user-id" not in headers
    assert "6.6.6.6" not in headers.get("x-forwarded-for", "")
    assert request.trailers == []
    assert request.body == b"hello"


def test_an_http_1_0_client_gets_a_body_of_unknown_length_ended_by_the_close(
    guarded: GatewayProcess, hostile: HostileUpstream
) -> None:
    answer = raw_request(guarded.port, b"GET /h/stream/200000 HTTP/1.0\r\nhost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert body == b"x" * 200000


def test_trace_gets_405(guarded: GatewayProcess, hostile: HostileUpstream) -> None:
    answer = raw_request(guarded.port, b"TRACE /h/echo/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert status_of(answer) == 405
    assert hostile.seen() == []


def test_the_metrics_port_serves_health_and_metrics_and_the_proxy_port_does_not(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream
) -> None:
    port = free_port()
    gateway = start_gateway(
        "--route", f"/h={hostile.url}/base", "--metrics-port", str(port), "--no-access-log"
    )
    local = f"http://127.0.0.1:{port}"
    assert httpx.get(local + "/healthz", timeout=5).text == "ok\n"
    assert "httpx_coalesce" in httpx.get(local + "/metrics", timeout=5).text
    # On the proxy port they are paths like any other: no route takes them here.
    assert httpx.get(gateway.url + "/metrics", timeout=5).status_code == 404
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 404


# -- connections ----------------------------------------------------------------------


def test_past_the_connection_cap_the_oldest_idle_connection_makes_room(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream
) -> None:
    gateway = start_gateway(
        "--route", f"/h={hostile.url}/base", "--max-client-connections", "4", "--no-access-log"
    )
    idle = [connect(gateway) for _ in range(4)]
    try:
        # Pass: the newcomer is served; the first idle connection was closed for it.
        assert httpx.get(gateway.url + "/h/echo/newcomer", timeout=10).text == "newcomer"
        idle[0].settimeout(10)
        assert read_until_closed(idle[0]) == b""
    finally:
        for sock in idle:
            sock.close()


def test_past_the_connection_cap_with_none_idle_a_newcomer_gets_503(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream
) -> None:
    gateway = start_gateway(
        "--route", f"/h={hostile.url}/base", "--max-client-connections", "3", "--no-access-log"
    )
    hostile.gate.clear()
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(httpx.get, f"{gateway.url}/h/held/echo/{n}", timeout=30) for n in range(3)]
        try:
            wait_for(lambda: len(hostile.seen()) == 3)
            answer = raw_request(gateway.port, b"GET /h/echo/late HTTP/1.1\r\nhost: x\r\n\r\n")
            assert status_of(answer) == 503
        finally:
            hostile.gate.set()
        assert [future.result().text for future in busy] == ["0", "1", "2"]


def test_1100_idle_connections_under_1024_descriptors_leave_healthz_answering(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(
        "--upstream",
        "http://127.0.0.1:9",
        "--client-header-timeout",
        "5",
        "--no-access-log",
        descriptors=1024,
    )
    idle: list[socket.socket] = []
    try:
        for _ in range(1100):
            idle.append(connect(gateway))
        # Pass: answered within the head timeout, and the gateway stayed under its limit.
        assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
        assert gateway.descriptors() < 1024
    finally:
        for sock in idle:
            sock.close()


# -- a client that reads nothing ------------------------------------------------------

STREAM = 40 * 1024 * 1024


class Stalled:
    """A client of the stream that takes its headers, then reads nothing until released;
    then reads what it can and records how much (None if the gateway dropped it)."""

    def __init__(self, url: str) -> None:
        self.headers = threading.Event()
        self.release = threading.Event()
        self.received: list[int | None] = []
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(url,), daemon=True).start()

    def _run(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=60) as response:
                self.headers.set()
                self.release.wait(120)
                try:
                    self.received.append(sum(len(chunk) for chunk in response.iter_raw()))
                except httpx.TransportError:
                    self.received.append(None)
        finally:
            self.done.set()


def stalled_and_reading(
    gateway: GatewayProcess, hostile: HostileUpstream
) -> tuple[Stalled, threading.Event, list[int]]:
    """Two clients of one 40 MiB stream (one upstream call): one stops reading after its
    headers, the other reads all of it. Returns the stalled one, an event set when the
    reader has its last byte, and (once set) the reader's byte count."""
    url = f"{gateway.url}/h/held/stream/{STREAM}"
    hostile.gate.clear()
    stalled = Stalled(url)
    wait_for(lambda: gateway.waiters() == 1)
    done = threading.Event()
    received: list[int] = []

    def read_all() -> None:
        with httpx.stream("GET", url, timeout=60) as response:
            received.append(sum(len(chunk) for chunk in response.iter_raw()))
        done.set()

    threading.Thread(target=read_all, daemon=True).start()
    wait_for(lambda: gateway.waiters() == 2)
    hostile.gate.set()
    assert stalled.headers.wait(30)
    return stalled, done, received


def test_a_client_that_reads_nothing_is_dropped_after_the_send_timeout_and_the_other_gets_everything(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream
) -> None:
    # The access log says when the gateway dropped a client: its line ends client-gone.
    gateway = start_gateway("--route", f"/h={hostile.url}/base", *LIMITS)
    stalled, done, received = stalled_and_reading(gateway, hostile)
    assert done.wait(60)
    assert received == [STREAM]
    # Pass: the gateway dropped the stalled client (it left its flight), and what it
    # then reads is cut short.
    wait_for(lambda: "client-gone" in gateway.log(), timeout=30)
    stalled.release.set()
    assert stalled.done.wait(60)
    assert stalled.received == [None]
    assert len(hostile.seen()) == 1  # one upstream call for both
    wait_for(lambda: gateway.waiters() == 0)


def test_a_40_mib_stream_shared_with_a_client_that_stops_reading_reaches_the_other_at_full_speed(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream
) -> None:
    gateway = start_gateway("--route", f"/h={hostile.url}/base", "--send-timeout", "10", "--no-access-log")
    stalled, done, received = stalled_and_reading(gateway, hostile)
    assert done.wait(60)
    assert received == [STREAM]
    # Pass: the reader got everything while the stalled client was still attached; the
    # stalled one, released, then reads all of it too: nobody waited for a drop.
    stalled.release.set()
    assert stalled.done.wait(60)
    assert stalled.received == [STREAM]
    assert len(hostile.seen()) == 1
