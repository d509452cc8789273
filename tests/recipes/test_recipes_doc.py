"""docs/recipes.md: its code compiles, and every recipe in its table names a test file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_openai_compatible import SDKS

pytestmark = pytest.mark.recipes

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
HERE = Path(__file__).resolve().parent


def test_every_python_block_compiles() -> None:
    blocks = re.findall(r"```python\n(.*?)\n```", DOC.read_text(), re.DOTALL)
    assert len(blocks) >= 10
    for block in blocks:
        compile(block, str(DOC), "exec")


def test_every_recipe_in_the_table_has_its_test() -> None:
    # Table rows name the SDK's section; each section's SDK has a test file of its own, but for
    # the SDKs that copy OpenAI's client, which share one.
    tested = {path.stem.removeprefix("test_") for path in HERE.glob("test_*.py")} | set(SDKS)
    expected = {
        "openai", "anthropic", "google_genai", "mistral", "cohere", "groq", "together", "fireworks",
        "cerebras", "langchain_openai", "pydantic_ai", "instructor", "litellm",
    }  # fmt: skip
    assert expected <= tested
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| [")]
    assert len(rows) == len(expected)
