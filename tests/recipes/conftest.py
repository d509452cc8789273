"""The recipes' tests run against tests/conftest.py's fake LLM API, which speaks every SDK's dialect.

The recipes' SDKs come with the ``recipes`` extra and their tests carry the ``recipes`` marker, which the
default run leaves out. A run that leaves them out does not even import these files, so it needs none of
the SDKs installed (and prints no skips for them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture
def anyio_backend() -> str:
    # Several of these SDKs (Pydantic AI, Google Gen AI, LiteLLM) run on asyncio only.
    return "asyncio"
