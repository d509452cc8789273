"""Every code block of the documentation (README.md and docs/*.md) is a tested example, or says why not.

What stands on the line before a block's opening fence (blank lines aside) decides how it is tested:

- nothing: a Python block, run here as written (with placeholder API keys in the environment, so that SDK
  clients can be built; nothing may be sent);
- ``<!-- snippet: name -->``: run against a fake API by tests/sdk/test_quickstart.py, which must name it;
- ``<!-- tested: path why -->``: the test file at *path* runs what the block shows (a recipe through its
  SDK, an example script); the path must exist, and every call the block makes (but ours, which a test
  may make through a fixture) is made by one of the files the comment names;
- ``<!-- not run: why -->``: not run (it needs a real API, a server, minutes); a Python block is still
  compiled here, so it is at least valid Python.

A block of another language needs one of the comments, since only Python blocks can run here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import httpx_coalesce

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
QUICKSTART_TEST = ROOT / "tests" / "sdk" / "test_quickstart.py"

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
_MARKER = re.compile(r"^<!-- (?P<kind>snippet|tested|not run): *(?P<text>.+?) *-->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # snippet, tested or not run
    marker_text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of *page*, each with the marker comment on the line before it, if any."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end])
        before = index - 1
        while before >= 0 and not lines[before].strip():  # a blank line may stand between them
            before -= 1
        marker = _MARKER.match(lines[before].strip()) if before >= 0 else None
        language = opening["info"].strip().split(" ")[0] if opening["info"].strip() else ""
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=language,
                code=code,
                marker=marker["kind"] if marker else None,
                marker_text=marker["text"] if marker else "",
            )
        )
        index = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def _id(block: Block) -> str:
    return block.where


def compile_python(block: Block) -> None:
    # Top-level ``await`` is allowed: a block may show one line of async code.
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_pages_have_code_blocks() -> None:
    # A parser that found nothing would pass every test below.
    assert len(ALL) >= 30
    assert {block.page.name for block in ALL} >= {"README.md", "index.md", "recipes.md", "fleet.md"}


@pytest.mark.parametrize("block", [b for b in ALL if b.language != "python"], ids=_id)
def test_a_block_that_is_not_python_says_how_it_is_tested(block: Block) -> None:
    assert block.marker in {"tested", "not run"}, f"{block.where}: mark it <!-- not run: why -->"


NOT_RUN_PYTHON = [b for b in ALL if b.marker == "not run" and b.language == "python"]


@pytest.mark.parametrize("block", NOT_RUN_PYTHON, ids=_id)
def test_a_python_block_not_run_still_compiles(block: Block) -> None:
    compile_python(block)


TESTED_ELSEWHERE = [b for b in ALL if b.marker == "tested"]


@pytest.mark.parametrize("block", TESTED_ELSEWHERE, ids=_id)
def test_a_block_tested_elsewhere_names_a_test_that_exists(block: Block) -> None:
    path = block.marker_text.split(" ")[0]
    assert (ROOT / path).is_file(), f"{block.where}: no {path}"
    if block.language == "python":
        compile_python(block)


@pytest.mark.parametrize("block", [b for b in TESTED_ELSEWHERE if b.language == "python"], ids=_id)
def test_what_a_block_tested_elsewhere_calls_is_called_by_its_test(block: Block) -> None:
    # The test exercises what the block shows: each call of the block (an SDK's constructor, an
    # exporter's) is made by one of the files its marker names too. Ours may come from a fixture.
    files = [ROOT / word for word in block.marker_text.split() if (ROOT / word).is_file()]
    tested = "".join(path.read_text(encoding="utf-8") for path in files)
    calls = {name.split(".")[-1] for name in re.findall(r"\b([A-Za-z_][\w.]*)\(", block.code)}
    missing = sorted(name for name in calls - set(httpx_coalesce.__all__) if f"{name}(" not in tested)
    assert not missing, (
        f"{block.where}: {', '.join(str(path.relative_to(ROOT)) for path in files)} never call"
    )


@pytest.mark.parametrize("block", [b for b in ALL if b.marker == "snippet"], ids=_id)
def test_a_snippet_is_run_by_the_quickstart_tests(block: Block) -> None:
    assert block.page.name == "sdk-quickstart.md", f"{block.where}: snippets live in docs/sdk-quickstart.md"
    assert f'run("{block.marker_text}"' in QUICKSTART_TEST.read_text(encoding="utf-8")


@pytest.mark.parametrize("block", [b for b in ALL if b.marker is None and b.language == "python"], ids=_id)
def test_a_python_block_runs_as_written(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    # Placeholder keys let the SDK clients be built; a block that sent a request would fail on them.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-placeholder")
    namespace: dict[str, object] = {"__name__": "docs_block"}
    exec(compile(block.code, block.where, "exec"), namespace)


def test_the_benchmarks_page_has_the_markers_the_runner_fills() -> None:
    # benchmarks/runner.py writes its headline table between them, and silently skips a page without both.
    from benchmarks.report import END_MARKER, START_MARKER

    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert text.count(START_MARKER) == 1
    assert text.index(START_MARKER) < text.index(END_MARKER)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_of_the_repository(page: Path) -> None:
    # Read as files (on a forge, in an editor) the links must work too, not only on the site that
    # mkdocs --strict checks; and the README is no page of the site at all.
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [target for target in targets if "://" not in target and not target.startswith("mailto:")]
    missing = [target for target in relative if not (page.parent / target).exists()]
    assert not missing
