"""The reference pages cover the public face: a new option or public name cannot land undocumented."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import httpx_coalesce
from httpx_coalesce import CoalescingTransport, Limits
from httpx_coalesce.redis import RedisBackend

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_option_of_the_transport_is_in_the_options_table() -> None:
    text = (DOCS / "options.md").read_text(encoding="utf-8")
    for name in inspect.signature(CoalescingTransport).parameters:
        assert f"| `{name}` |" in text, f"docs/options.md has no row for {name}="


def test_every_limit_is_in_the_limits_table() -> None:
    text = (DOCS / "options.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(Limits):
        assert f"`{field.name}`" in text, f"docs/options.md has no row for Limits.{field.name}"


def test_every_public_name_is_in_the_api_reference() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for name in httpx_coalesce.__all__:
        if name != "__version__":
            assert f"::: httpx_coalesce.{name}\n" in text, f"docs/api.md does not render {name}"
    assert f"::: httpx_coalesce.redis.{RedisBackend.__name__}\n" in text
