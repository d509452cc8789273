"""An upstream that frames its answers wrong never gets another client's request on
that connection: its extra bytes are never anyone's answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import GatewayProcess, wait_for
from .hostile import HostileUpstream


def echo_clients(gateway: GatewayProcess, count: int) -> None:
    """*count* clients at once, each with its own token: each gets exactly its own."""
    tokens = [f"client-{n}" for n in range(count)]
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda token: httpx.get(f"{gateway.url}/h/echo/{token}", timeout=15), tokens))
    assert [(answer.status_code, answer.text) for answer in answers] == [(200, token) for token in tokens]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/204-with-bytes", 204),
        ("GET", "/304-with-bytes", 304),
        ("HEAD", "/head-with-body", 200),
        ("GET", "/bytes-past-length", 200),
    ],
)
def test_a_connection_with_bytes_after_its_response_is_closed_and_every_next_client_gets_its_own_answer(
    hostile_gateway: GatewayProcess, hostile: HostileUpstream, method: str, path: str, status: int
) -> None:
    # Pass: the client gets the response as framed (no body where none may be), the
    # upstream sees its connection closed, and 20 clients after it each get their echo.
    echo_clients(hostile_gateway, 4)  # connections in the pool, ready for reuse
    _, closed = hostile.connections()
    answer = httpx.request(method, hostile_gateway.url + "/h" + path, timeout=15)
    assert answer.status_code == status
    if status in (204, 304):
        assert answer.content == b""
        assert "content-length" not in answer.headers
    elif method == "GET":
        assert answer.content == b"ok"
    wait_for(lambda: hostile.connections()[1] > closed)
    echo_clients(hostile_gateway, 20)
    assert b"stolen" not in answer.content


def test_content_length_beside_chunked_is_a_502_and_the_connection_is_not_reused(
    hostile_gateway: GatewayProcess, hostile: HostileUpstream
) -> None:
    # Pass: 502 (a smuggling attempt is an upstream error), never "200 content-length: 3".
    echo_clients(hostile_gateway, 2)
    _, closed = hostile.connections()
    answer = httpx.get(hostile_gateway.url + "/h/length-and-chunked", timeout=15)
    assert answer.status_code == 502
    wait_for(lambda: hostile.connections()[1] > closed)
    echo_clients(hostile_gateway, 20)


@pytest.mark.parametrize("coalesced", [True, False], ids=["coalesced", "passed-through"])
def test_an_honest_connection_serves_the_next_request_whether_coalesced_or_passed_through(
    hostile_gateway: GatewayProcess, hostile: HostileUpstream, coalesced: bool
) -> None:
    # Pass: ten answers one after another, each read to its end, open at most one new
    # upstream connection (a response the gateway stopped reading at its last byte
    # would cost its connection: httpcore closes one whose response did not end).
    headers = {} if coalesced else {"x-coalesce": "off"}
    opened, _ = hostile.connections()
    with httpx.Client(timeout=15) as client:
        for n in range(10):
            answer = client.get(f"{hostile_gateway.url}/h/echo/reuse-{n}", headers=headers)
            assert (answer.status_code, answer.text) == (200, f"reuse-{n}")
    assert hostile.connections()[0] - opened <= 1
