"""The fleet benchmarks' worker processes (``bench_faults``, ``bench_redis``): the coordinator
starts each with a JSON config; a worker reports events as JSON lines on stdout (``emit``) and
reads commands as JSON lines on stdin, and ends when its stdin closes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def emit(event: str, **fields: Any) -> None:
    """The worker's side: one event for the coordinator."""
    print(json.dumps({"event": event, **fields}), flush=True)


class WorkerProcess:
    """The coordinator's side: ``python -m module --worker config``, run from the repository root."""

    def __init__(self, module: str, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--worker", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str) -> dict[str, Any]:
        """The next event, which must be *event*."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        message: dict[str, Any] = json.loads(line)
        if message["event"] != event:
            raise RuntimeError(f"expected {event}, got {message}")
        return message

    def stop(self) -> None:
        """Closes its stdin (its signal to end) and waits for it; kills it after 10 s."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def workers(module: str, config: dict[str, Any], count: int, ready: str) -> Iterator[list[WorkerProcess]]:
    """*count* workers of *module* with *config*, each past its *ready* event; stopped
    afterwards, whatever happened."""
    processes: list[WorkerProcess] = []
    try:
        processes.extend(WorkerProcess(module, config) for _ in range(count))
        for process in processes:
            process.expect(ready)
        yield processes
    finally:
        for process in processes:
            process.stop()
