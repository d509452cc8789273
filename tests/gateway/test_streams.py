"""Streams through the gateway: live to every client, and no client can hurt another."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..upstream import Upstream
from .conftest import H11_SERVER, GatewayProcess, wait_for


def read_events(url: str, first: threading.Semaphore | None = None) -> list[bytes]:
    """Every SSE line of the stream; releases *first* on the first one."""
    lines: list[bytes] = []
    with httpx.stream("POST", url, content=b"stream", timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                if not lines and first is not None:
                    first.release()
                lines.append(line.encode())
    return lines


def test_a_client_leaving_mid_stream_does_not_disturb_the_others(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    url = gateway.url + "/up/sse?events=6&hold=3"
    upstream.hold()
    staying_first = threading.Semaphore(0)

    def leave_after_one_event() -> None:
        with httpx.stream("POST", url, content=b"stream", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    # Leave only once both others have an event, so are in the flight: a
                    # client leaving a flight it has alone rightly cancels the call, and
                    # the others would then make a second one.
                    for _ in range(2):
                        assert staying_first.acquire(timeout=15)
                    break

    with ThreadPoolExecutor(3) as pool:
        staying = [pool.submit(read_events, url, staying_first) for _ in range(2)]
        leaving = pool.submit(leave_after_one_event)
        leaving.result()
        # The leaver's seat is gone; the flight goes on for the two others.
        wait_for(lambda: gateway.waiters() == 2)
        upstream.gate.set()
        results = [future.result() for future in staying]
    expected = [f'data: {{"n":{n}}}'.encode() for n in range(6)] + [b"data: [DONE]"]
    assert results == [expected, expected]
    assert upstream.total == 1
    assert upstream.disconnects == 0


def test_the_upstream_call_is_cancelled_when_its_last_client_leaves(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    left = '/up/sse" 200 led,client-gone'
    before = gateway.log().count(left)  # the session's gateway logged other tests too
    upstream.hold()
    with httpx.stream(
        "POST", gateway.url + "/up/sse?events=6&hold=2", content=b"alone", timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    # The gate is still closed: the stream can only have ended because it was cancelled.
    wait_for(lambda: upstream.streams_closed == 1)
    assert not upstream.gate.is_set()
    wait_for(lambda: gateway.waiters() == 0)
    wait_for(lambda: gateway.log().count(left) == before + 1)


def test_under_uvicorns_h11_protocol_too_the_upstream_call_is_cancelled_when_its_last_client_leaves(
    start_gateway: Callable[..., GatewayProcess], base_url: str, upstream: Upstream
) -> None:
    # Pass: as above, on a server that does not call the app back when a client goes
    # (the gateway's protocol does): the app's own watch sees uvicorn's http.disconnect.
    gateway = start_gateway("--route", f"/up={base_url}", server=H11_SERVER)
    upstream.hold()
    with httpx.stream(
        "POST", gateway.url + "/up/sse?events=6&hold=2", content=b"alone under h11", timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    wait_for(lambda: upstream.streams_closed == 1)
    assert not upstream.gate.is_set()
    wait_for(lambda: gateway.waiters() == 0)
    wait_for(lambda: '/up/sse" 200 led,client-gone' in gateway.log())


def test_a_stalled_client_does_not_stall_the_others_of_its_flight(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    # 4 MB of events: far more than any socket buffers hold, less than a flight keeps.
    url = "/up/sse?events=400&pad=10000"
    upstream.hold()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", gateway.port))
    try:
        # The very headers httpx sends for the readers' requests: one key, one flight.
        with httpx.Client() as client:
            request = client.build_request("POST", gateway.url + url, content=b"stream")
        head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        stalled.sendall(f"POST {url} HTTP/1.1\r\n{head}\r\n".encode() + request.content)
        wait_for(lambda: gateway.waiters() == 1)
        with ThreadPoolExecutor(3) as pool:
            readers = [pool.submit(read_events, gateway.url + url) for _ in range(3)]
            wait_for(lambda: gateway.waiters() == 4)
            upstream.gate.set()
            # The readers finish while the stalled client has read nothing at all.
            results = [future.result(timeout=60) for future in readers]
        assert all(len(result) == 401 for result in results)
        assert upstream.total == 1
    finally:
        stalled.close()
    wait_for(lambda: gateway.waiters() == 0)
