"""MkDocs hook: the gateway's flags, as a table made from its own argument parser.

``docs/gateway.md`` says ``<!-- gateway-flags -->`` where the table goes. Made from
``build_parser()`` at build time, the table lists every flag ``httpx-coalesce serve`` accepts, its
environment variable and its default, so it cannot fall behind the code.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any
from unittest import mock

from httpx_coalesce.gateway._config import ENV_PREFIX, build_parser

MARKER = "<!-- gateway-flags -->"
_DEFAULT_NOTE = re.compile(r"\s*\(default: [^)]*\)$")


def _default_text(default: object) -> str:
    if default is None:
        return ""
    if default is False:  # a switch: off unless given
        return "off"
    return f"`{default}`"


def flags_table() -> str:
    # The parser takes its defaults from HTTPX_COALESCE_* variables: build it without them.
    ours = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    with mock.patch.dict(os.environ, ours, clear=True):
        parser = build_parser()
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:  # argparse keeps no public list of its arguments
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if not flags or isinstance(action, argparse._HelpAction):
            continue
        flag = flags[0]
        shown = f"`{flag} {action.metavar}`" if action.metavar else f"`{flag}`"
        env = f"`{ENV_PREFIX}{flag[2:].upper().replace('-', '_')}`"
        default = _default_text(action.default)
        meaning = _DEFAULT_NOTE.sub("", action.help or "").replace("|", "\\|")
        rows.append(f"| {shown} | {env} | {default} | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, flags_table())
    return markdown
