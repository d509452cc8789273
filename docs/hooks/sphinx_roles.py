"""Griffe extension: the package's reST-flavoured docstrings, readable in the API reference.

The docstrings were written for ``help()`` and editors, with Sphinx roles (``:meth:`close```) and
literal blocks introduced by ``::``. mkdocstrings reads docstrings as Markdown, where a role shows as
its raw text. This turns each role into a code span and drops the ``::`` markers (the indented block
after one is already a code block in Markdown), so the docstrings stay as they are for ``help()``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:meth|func|class|attr|exc|data|mod|obj):`~?([^`]+)`")
_LONE_LITERAL_MARKER = re.compile(r"^\s*::\s*$", re.MULTILINE)
_TRAILING_LITERAL_MARKER = re.compile(r"::$", re.MULTILINE)


def markdown_of(docstring: str) -> str:
    text = _ROLE.sub(r"`\1`", docstring)
    text = _LONE_LITERAL_MARKER.sub("", text)
    return _TRAILING_LITERAL_MARKER.sub(":", text)


class SphinxRoles(Extension):
    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        self._convert(pkg)

    def _convert(self, obj: Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
        for member in obj.members.values():
            if isinstance(member, Object):  # an alias's docstring is its target's, converted there
                self._convert(member)
