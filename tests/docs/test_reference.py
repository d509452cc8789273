"""The reference pages cover the public face: a new option or public name cannot land undocumented."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import httpx_coalesce
from httpx_coalesce import CoalescingTransport, Limits
from httpx_coalesce.gateway._config import build_parser
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


def test_the_gateway_flags_table_lists_every_flag() -> None:
    # The hook needs no mkdocs to make its table, so this runs where the docs extra is not installed:
    # a change to the gateway's parser that breaks the site's table shows here.
    spec = importlib.util.spec_from_file_location("gateway_flags", DOCS / "hooks" / "gateway_flags.py")
    assert spec is not None
    assert spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    table = hook.flags_table()
    help_text = build_parser().format_help()
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert flags
    for flag in flags:
        assert f"| `{flag}" in table, f"the flags table has no row for {flag}"
    assert hook.on_page_markdown(f"before\n{hook.MARKER}\nafter", page=None) == f"before\n{table}\nafter"
