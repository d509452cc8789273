"""The gateway benchmark runs end to end (tiny sizes), against nginx as configured there.

Its figures are not checked here, only that every contender answered every client and
that both coalescing set-ups sent one upstream call per burst.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import gateway as bench


def test_quick_benchmark_run_coalesces_through_the_gateway_and_through_nginx(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for program in ("wrk", "nginx"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            pytest.skip(f"{program} is not installed (apt-get install {program})")
    assert bench.main(["--quick"]) == 0
    table = capsys.readouterr().out
    assert "| upstream calls | 1 | 1 |" in table
    assert "| clients that got the whole answer | 20 | 20 |" in table
    assert "| clients that got the whole answer | 5 | 5 |" in table
