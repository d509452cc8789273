"""MkDocs hook: the benchmark results and scripts the pages link to, served from where they live.

The pages link to ``../benchmarks/results/*.md``, ``*.png``, ``*.json`` and ``../benchmarks/*.py``, where
the files are in the repository, so the links work where the pages are read as files (on a forge, in an
editor). Those files are written by the benchmarks into ``benchmarks/``, outside ``docs/``; copying them
into ``docs/`` would leave two copies to drift apart. This hook adds them to the site as
``benchmarks/...`` and points the pages' links there, so ``mkdocs build --strict`` checks every such link
against the real files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SERVED = ("benchmarks/results/*", "benchmarks/*.py")


def on_files(files: Files, config: Any) -> Files:
    for pattern in SERVED:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file():
                src_uri = path.relative_to(ROOT).as_posix()
                files.append(
                    File(
                        src_uri,
                        src_dir=str(ROOT),
                        dest_dir=config["site_dir"],
                        use_directory_urls=config["use_directory_urls"],
                    )
                )
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    # A page n folders deep reaches the repository's benchmarks/ through n + 1 "../", the site's through n.
    depth = page.file.src_uri.count("/")
    return markdown.replace("](" + "../" * (depth + 1) + "benchmarks/", "](" + "../" * depth + "benchmarks/")
