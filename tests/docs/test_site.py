"""The documentation site builds with ``--strict``: no broken link, anchor or API reference.

.ci/run builds it too, after installing the ``docs`` extra; this test builds it wherever that extra is
installed, so a page edited in a worktree is checked before it lands.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("mkdocs", "material", "mkdocstrings_handlers.python")


@pytest.mark.skipif(
    any(importlib.util.find_spec(name.split(".")[0]) is None for name in NEEDED),
    reason='the docs extra is not installed: pip install -e ".[docs]"',
)
@pytest.mark.timeout(180)
def test_the_site_builds_strict(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert build.returncode == 0, "\n".join(warnings) or build.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_every_readme_section_the_pages_include_is_marked_in_the_readme() -> None:
    # Checked without mkdocs too: removing a marker from the README would break the site's build.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    include = re.compile(r'^--8<-- "README\.md:([\w-]+)"$', re.MULTILINE)
    pages = sorted((ROOT / "docs").rglob("*.md"))
    included = {name for page in pages for name in include.findall(page.read_text(encoding="utf-8"))}
    assert included
    for name in included:
        start, end = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
        assert readme.count(start) == 1, f"README.md has no {start}"
        assert readme.index(start) < readme.index(end), f"README.md has no {end} after its start"
