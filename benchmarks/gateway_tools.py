"""What the gateway benchmarks share: wrk as the load generator, processes started and
waited for, and the CPU time of a process tree.

wrk (Debian package ``wrk``) rather than a Python client: a Python client spends more
CPU per request than the gateway does, so on two cores it would measure itself. Its Lua
script makes every request body unique (no coalescing: the overhead is measured), and
reports exact percentiles in microseconds from its own HdrHistogram.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["PYTHON", "ROOT", "Load", "Process", "free_port", "have", "tree_cpu", "tree_rss", "wrk"]

ROOT = Path(__file__).resolve().parent.parent

_LUA = r"""
local counter = 0
local id = 0
setup = function(thread)
  thread:set("id", id)
  id = id + 1
end
request = function()
  counter = counter + 1
  local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"unique ' ..
    id .. '-' .. counter .. '-' .. os.time() .. '"}]}'
  return wrk.format("POST", wrk.path, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format('RESULT {"p50": %d, "p99": %d, "mean": %.1f, "requests": %d, ' ..
    '"duration_us": %d, "errors": %d}\n', latency:percentile(50), latency:percentile(99),
    latency.mean, summary.requests, summary.duration, errors))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    p50_us: float
    p99_us: float
    requests: int
    seconds: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def have(program: str) -> bool:
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(program) is not None or Path("/usr/sbin", program).exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wrk(url: str, connections: int, seconds: float, threads: int = 1) -> Load:
    """Closed-loop load: *connections* connections, each one request at a time."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA)
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{round(seconds)}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    data = json.loads(line.removeprefix("RESULT "))
    return Load(
        p50_us=float(data["p50"]),
        p99_us=float(data["p99"]),
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors=int(data["errors"]),
    )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except FileNotFoundError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _tree(pid: int) -> Iterator[int]:
    """A process and its descendants (one gone meanwhile has no children to list)."""
    pending = [pid]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(_children(current))


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants now alive."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for current in _tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime and stime are fields 14 and 15 of stat; [2:] after the ")" split.
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    total = 0
    for current in _tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


class Process:
    """A server in a child process, ready once *ready_url* answers."""

    def __init__(
        self,
        argv: Sequence[str],
        ready_url: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            list(argv), cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.popen.returncode}")
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{argv[0]} did not answer {ready_url}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


PYTHON = sys.executable
