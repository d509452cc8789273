"""The gateway behaves as a reverse proxy must: header rules, keys, bad input, no open proxy."""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from ..upstream import Upstream
from .conftest import ROOT, GatewayProcess, wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "proxy rules"}]}


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post_chat(gateway: GatewayProcess, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        gateway.url + "/fake/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer sk-one", **(headers or {})},
        timeout=15,
    )


def concurrently(
    calls: Sequence[Callable[[], Any]], until: Callable[[], bool], release: threading.Event
) -> list[Any]:
    """Start every call, wait for *until*, release the upstream, return the results."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            wait_for(until)
        finally:
            release.set()
        return [future.result() for future in futures]


@pytest.fixture
def hold(fake_api: FakeLLMAPI) -> threading.Event:
    event = threading.Event()
    fake_api.hold = event
    return event


def test_hop_by_hop_headers_are_dropped_host_rewritten_and_forwarded_headers_added(
    gateway: GatewayProcess, fake_api: FakeLLMAPI, fake_api_server: tuple[FakeLLMAPI, LocalServer]
) -> None:
    response = post_chat(
        gateway,
        {
            "connection": "keep-alive, x-named-by-connection",
            "x-named-by-connection": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic c2VjcmV0",
            "x-forwarded-for": "203.0.113.7",
            "x-kept": "yes",
        },
    )
    assert response.status_code == 200
    seen = fake_api.seen_headers[-1]
    for name in ("x-named-by-connection", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    assert seen.get("connection", "keep-alive") == "keep-alive"  # the gateway's own connection's
    assert seen["host"] == fake_api_server[1].url.removeprefix("http://")
    assert seen["x-kept"] == "yes"
    assert seen["authorization"] == "Bearer sk-one"
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_no_forwarded_headers_flag_adds_none(
    start_gateway: Callable[..., GatewayProcess],
    fake_api: FakeLLMAPI,
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
) -> None:
    gateway = start_gateway("--route", f"/fake={fake_api_server[1].url}", "--no-forwarded-headers")
    assert post_chat(gateway).status_code == 200
    seen = fake_api.seen_headers[-1]
    assert "x-forwarded-for" not in seen
    assert "x-forwarded-proto" not in seen


def test_gzip_body_passes_through_encoded(gateway: GatewayProcess, upstream: Upstream) -> None:
    response = httpx.get(gateway.url + "/up/gzip", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    raw = response.read()  # httpx decodes .content; the wire bytes must still be gzip
    assert response.content.startswith(b"coalesced and compressed")
    with httpx.stream("GET", gateway.url + "/up/gzip", headers={"accept-encoding": "gzip"}) as streamed:
        wire = b"".join(streamed.iter_raw())
    assert wire[:2] == b"\x1f\x8b"
    assert gzip.decompress(wire) == raw
    assert int(streamed.headers["content-length"]) == len(wire)


def test_accept_encoding_takes_part_in_the_key(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.hold()
    calls = [
        partial(
            httpx.post,
            gateway.url + "/up/echo",
            content=b"same",
            headers={"accept-encoding": encoding},
            timeout=15,
        )
        for encoding in ("gzip", "identity")
    ]
    # Both reach the upstream: had they shared, the second would never arrive.
    responses = concurrently(calls, lambda: upstream.total == 2, upstream.gate)
    assert [response.status_code for response in responses] == [200, 200]


def test_two_api_keys_never_share(
    gateway: GatewayProcess, fake_api: FakeLLMAPI, hold: threading.Event
) -> None:
    calls = [
        partial(post_chat, gateway, {"authorization": f"Bearer {key}"})
        for key in ("sk-alice", "sk-alice", "sk-bob")
    ]
    responses = concurrently(calls, lambda: fake_api.held == 2 and gateway.waiters() == 3, hold)
    ids = [response.json()["id"] for response in responses]
    assert fake_api.hits == 2
    assert ids[0] == ids[1] != ids[2]


def test_opt_out_header_sends_each_request_and_is_not_forwarded(
    gateway: GatewayProcess, fake_api: FakeLLMAPI, hold: threading.Event
) -> None:
    bypassed = gateway.log().count(" bypassed ")
    calls = [lambda: post_chat(gateway, {"x-coalesce": "off"})] * 2
    responses = concurrently(calls, lambda: fake_api.held == 2, hold)
    assert len({response.json()["id"] for response in responses}) == 2
    assert all("x-coalesce" not in seen for seen in fake_api.seen_headers)
    wait_for(lambda: gateway.log().count(" bypassed ") == bypassed + 2)


def test_access_log_has_one_line_per_request_with_outcome_and_no_secret(
    gateway: GatewayProcess, fake_api: FakeLLMAPI, hold: threading.Event
) -> None:
    url = gateway.url + "/fake/v1/chat/completions?key=query-secret"

    def call() -> httpx.Response:
        return httpx.post(url, json=CHAT, headers={"authorization": "Bearer sk-log-secret"}, timeout=15)

    served = '/fake/v1/chat/completions" 200'
    before = gateway.log().count(served)  # the session's gateway logged other tests too
    concurrently([call] * 3, lambda: gateway.waiters() == 3, hold)
    wait_for(lambda: gateway.log().count(served) == before + 3)
    lines = [line for line in gateway.log().splitlines() if served in line]
    outcomes = sorted(line.split()[-2] for line in lines[-3:])
    assert outcomes == ["joined", "joined", "led"]
    log = gateway.log()
    assert "sk-log-secret" not in log
    assert "query-secret" not in log
    assert "?" not in "".join(lines)


def test_metrics_count_outcomes_in_prometheus_text(
    gateway: GatewayProcess, fake_api: FakeLLMAPI, hold: threading.Event
) -> None:
    requests = "httpx_coalesce_requests_total"
    led, joined = (gateway.metric(requests, httpx_coalesce_outcome=outcome) for outcome in ("led", "joined"))
    calls = gateway.metric("httpx_coalesce_upstream_calls_total")
    concurrently([lambda: post_chat(gateway)] * 4, lambda: gateway.waiters() == 4, hold)
    assert gateway.metric(requests, httpx_coalesce_outcome="led") == led + 1
    assert gateway.metric(requests, httpx_coalesce_outcome="joined") == joined + 3
    assert gateway.metric("httpx_coalesce_upstream_calls_total") == calls + 1
    assert gateway.metric("httpx_coalesce_flight_callers_count") >= 1
    assert gateway.waiters() == 0
    response = httpx.get(gateway.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert httpx.get(gateway.url + "/healthz").text == "ok\n"


def test_window_serves_a_finished_response_again(
    start_gateway: Callable[..., GatewayProcess],
    fake_api: FakeLLMAPI,
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
) -> None:
    gateway = start_gateway("--route", f"/fake={fake_api_server[1].url}", "--window", "60")
    first, second = post_chat(gateway), post_chat(gateway)
    assert first.json()["id"] == second.json()["id"]
    assert fake_api.hits == 1
    wait_for(lambda: " window " in gateway.log())


# -- bad input ---------------------------------------------------------------------------


def test_body_over_the_limit_gets_413_declared_or_chunked(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    big = b"x" * 70_000  # the session gateway takes 65,536 bytes
    assert httpx.post(gateway.url + "/up/echo", content=big).status_code == 413
    assert httpx.post(gateway.url + "/up/echo", content=iter([big[:40_000], big[40_000:]])).status_code == 413
    assert httpx.post(gateway.url + "/up/echo", content=big[:65_536]).status_code == 200
    # A chunked body within the limit goes upstream whole, with its length.
    chunked = httpx.post(gateway.url + "/up/echo", content=iter([b"ab", b"cd"]))
    assert chunked.json()["body_sha"] == hashlib.sha256(b"abcd").hexdigest()
    assert upstream.total == 2


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /up/echo HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\n\r\n",
        b"POST /up/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"GET /up/echo HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
    ],
    ids=["garbage", "length-not-a-number", "two-lengths", "header-without-colon"],
)
def test_malformed_requests_get_400(
    gateway: GatewayProcess, upstream: Upstream, request_bytes: bytes
) -> None:
    assert status_of(raw_exchange(gateway.port, request_bytes)) == 400
    assert upstream.total == 0
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_unreachable_upstream_gets_502(gateway: GatewayProcess) -> None:
    response = httpx.post(gateway.url + "/dead/v1/chat/completions", json=CHAT)
    assert response.status_code == 502


def test_upstream_timeout_gets_504(
    start_gateway: Callable[..., GatewayProcess],
    upstream: Upstream,
    base_url: str,
) -> None:
    gateway = start_gateway("--route", f"/up={base_url}", "--read-timeout", "0.2")
    assert httpx.get(gateway.url + "/up/slow?seconds=5", timeout=10).status_code == 504


def test_upstream_breaking_mid_body_breaks_the_client_connection(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(gateway.url + "/up/reset")
    assert httpx.get(gateway.url + "/healthz").status_code == 200


# -- never an open proxy ------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[tuple[Upstream, LocalServer]]:
    """A live server the gateway is not configured for: nothing may ever reach it."""
    state = Upstream()
    with LocalServer(state.app) as server:
        yield state, server


def test_no_request_reaches_a_host_that_is_not_configured(
    gateway: GatewayProcess, upstream: Upstream, elsewhere: tuple[Upstream, LocalServer]
) -> None:
    other, server = elsewhere
    authority = server.url.removeprefix("http://").encode()
    attempts = [
        b"GET http://"
        + authority
        + b"/echo HTTP/1.1\r\nhost: "
        + authority
        + b"\r\nconnection: close\r\n\r\n",
        b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\nconnection: close\r\n\r\n",
        b"GET //" + authority + b"/echo HTTP/1.1\r\nhost: " + authority + b"\r\nconnection: close\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nhost: " + authority + b"\r\nconnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /upx/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ]
    for attempt in attempts:
        assert status_of(raw_exchange(gateway.port, attempt)) in (400, 404), attempt
    # Dot segments stay on the configured upstream, whatever they climb to.
    climbing = b"GET /up/../../echo HTTP/1.1\r\nhost: " + authority + b"\r\nconnection: close\r\n\r\n"
    assert status_of(raw_exchange(gateway.port, climbing)) in (200, 400, 404)
    assert other.total == 0


def test_absolute_form_target_gets_400_even_for_a_routed_path(
    gateway: GatewayProcess, upstream: Upstream, elsewhere: tuple[Upstream, LocalServer]
) -> None:
    other, server = elsewhere
    authority = server.url.removeprefix("http://").encode()
    for host in (authority, b"127.0.0.1:%d" % gateway.port):
        answer = raw_exchange(
            gateway.port,
            b"GET http://" + host + b"/up/echo HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n",
        )
        assert status_of(answer) == 400
    assert other.total == 0
    assert upstream.total == 0


# -- settings ------------------------------------------------------------------------------


def test_settings_come_from_environment_variables(
    start_gateway: Callable[..., GatewayProcess],
    upstream: Upstream,
    base_url: str,
) -> None:
    gateway = start_gateway(
        env={"HTTPX_COALESCE_UPSTREAM": base_url, "HTTPX_COALESCE_MAX_REQUEST_BODY": "10"}
    )
    assert httpx.post(gateway.url + "/echo", content=b"0123456789").status_code == 200
    assert httpx.post(gateway.url + "/echo", content=b"0123456789a").status_code == 413


def test_help_documents_every_flag_and_needs_no_server() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from httpx_coalesce.gateway import _cli\n"
        "assert 'uvicorn' not in sys.modules\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    _cli.main(['--help'])\n"
        "print(out.getvalue())\n"
    )
    text = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--upstream",
        "--route",
        "--host",
        "--port",
        "--workers",
        "--redis",
        "--window",
        "--max-request-body",
        "--max-flights",
        "--max-waiters",
        "--max-body-bytes",
        "--no-forwarded-headers",
        "HTTPX_COALESCE_",
    ):
        assert flag in text


def test_nothing_to_proxy_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "httpx_coalesce", "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--upstream" in result.stderr


def test_bad_route_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "httpx_coalesce", "serve", "--route", "/a=ftp://x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "http:// or https://" in result.stderr
