"""One fake LLM API for the cost tests, and how to wait for the pricer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from httpx_coalesce._cost import wait_priced
from httpx_coalesce._demo.fake_api import FakeLLMAPI, make_fake_api
from httpx_coalesce._demo.server import LocalServer


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[tuple[FakeLLMAPI, str]]:
    api = make_fake_api()
    with LocalServer(api.app, on_stop=api.close) as server:
        yield api, server.url


@pytest.fixture
def api(_fake_server: tuple[FakeLLMAPI, str]) -> Iterator[FakeLLMAPI]:
    api = _fake_server[0]
    api.hold = None
    api.reset()
    yield api
    if api.hold is not None:
        api.hold.set()
    api.hold = None


@pytest.fixture
def url(_fake_server: tuple[FakeLLMAPI, str]) -> str:
    return _fake_server[1]


def priced() -> None:
    """Every answer handed to the pricer so far is priced."""
    assert wait_priced(10.0), "the pricer did not catch up"
