"""Fixtures of the differential suite: one loopback server and one upload file for all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The comparisons live in scenarios.py: let pytest show their diffs.
pytest.register_assert_rewrite("tests.differential.scenarios")

from .server import DifferentialServer  # noqa: E402

#: The bytes of the file uploaded by the "file" and "multipart" body kinds.
UPLOAD = b"0123456789 an upload read from a file " * 8


@pytest.fixture(scope="session")
def server() -> Iterator[DifferentialServer]:
    with DifferentialServer() as running:
        yield running


@pytest.fixture(scope="session")
def upload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("differential") / "upload.txt"
    path.write_bytes(UPLOAD)
    return path
