"""One fake LLM API for the recipes' tests, speaking every SDK's dialect, reset before each test.

The recipes' SDKs come with the ``recipes`` extra and their tests carry the ``recipes`` marker, which the
default run leaves out. A run that leaves them out does not even import these files, so it needs none of
the SDKs installed (and prints no skips for them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from ..conftest import until_sync

# LiteLLM fetches its model price list from the internet when imported unless told not to (and retries for
# seconds where there is no network); the copy it ships is all the tests need.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _recipes_selected(config: pytest.Config) -> bool:
    expression = str(config.option.markexpr)
    return "recipes" in expression and "not recipes" not in expression


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return None if _recipes_selected(config) else True
    return None


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[FakeLLMAPI, str]]:
    api = FakeLLMAPI()
    with LocalServer(api.app, on_stop=api.close) as server:
        yield api, server.url


@pytest.fixture
def url(fake_server: tuple[FakeLLMAPI, str]) -> str:
    return fake_server[1]


@pytest.fixture
def api(fake_server: tuple[FakeLLMAPI, str]) -> Iterator[FakeLLMAPI]:
    api = fake_server[0]
    api.gate = api.hold = None
    api.reset()
    yield api
    # Release whatever a failed test left waiting, and let its streams end before the next test.
    for event in (api.gate, api.hold):
        if event is not None:
            event.set()
    api.gate = api.hold = None
    until_sync(lambda: api.open_streams == 0 and api.held == 0)


@pytest.fixture
def anyio_backend() -> str:
    # Several of these SDKs (Pydantic AI, Google Gen AI, LiteLLM) run on asyncio only.
    return "asyncio"
