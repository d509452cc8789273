"""The real gateway, as a process on loopback, in front of counting upstreams.

One gateway process serves most tests (starting one costs about a second): it routes
``/fake`` to the OpenAI-shaped fake API, ``/up`` to the tests' counting upstream, and
``/dead`` to a port nobody listens on. Tests that need other flags start their own.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from httpx_coalesce._demo.fake_api import FakeLLMAPI
from httpx_coalesce._demo.server import LocalServer

from ..support.ports import free_port
from ..upstream import Upstream
from .hostile import HostileUpstream

ROOT = Path(__file__).resolve().parents[2]


#: The gateway's app served by uvicorn's h11 protocol, as where httptools cannot be
#: installed (``serve`` picks httptools whenever it can): the same flags as ``serve``.
H11_SERVER = (
    "-c",
    "import os, sys, uvicorn\n"
    "from httpx_coalesce.gateway._cli import _log_config\n"
    "from httpx_coalesce.gateway._config import CONFIG_ENV, config_from_args\n"
    "config = config_from_args(sys.argv[1:])\n"
    "os.environ[CONFIG_ENV] = config.to_json()\n"
    "uvicorn.run('httpx_coalesce.gateway._app:app_from_env', factory=True, host=config.host,"
    " port=config.port, http='h11', lifespan='on', log_config=_log_config(), access_log=False)\n",
)


class GatewayProcess:
    """``python -m httpx_coalesce serve ARGS`` on a free port, ready once /healthz answers.

    *server*: the interpreter's arguments that start it instead of ``-m httpx_coalesce
    serve`` (say H11_SERVER), given the same flags.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        descriptors: int | None = None,
        server: tuple[str, ...] = ("-m", "httpx_coalesce", "serve"),
    ) -> None:
        self.port = free_port()
        # Closed in stop(), with the process whose standard error it holds.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, *server, "--port", str(self.port), *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            # A descriptor limit of its own (soft and hard), as `ulimit -n` would set.
            preexec_fn=None if descriptors is None else partial(_limit_descriptors, descriptors),
        )
        deadline = time.monotonic() + timeout
        # With a metrics port, /healthz is served there only.
        health = self.url + "/healthz"
        if "--metrics-port" in args:
            health = f"http://127.0.0.1:{args[args.index('--metrics-port') + 1]}/healthz"
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.popen.returncode}:\n{self.log()}")
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gateway never answered /healthz:\n{self.log()}")
            time.sleep(0.02)

    def rss(self) -> int:
        """The process's resident memory, in bytes (Linux)."""
        with open(f"/proc/{self.popen.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.popen.pid}/fd"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of one scrape: name, labels (OpenTelemetry's scope labels left out), value."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return [
            (
                sample.name,
                {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope")},
                sample.value,
            )
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of *name* that carry *labels* (0 if there is none yet)."""
        return sum(
            value
            for sample, found, value in self.metrics()
            if sample == name and all(found.get(key) == wanted for key, wanted in labels.items())
        )

    def waiters(self) -> int:
        return int(self.metric("httpx_coalesce_waiters_active"))

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()


def _limit_descriptors(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for a condition another process brings about (tests wait on states, not times)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        time.sleep(0.005)


@pytest.fixture(scope="session")
def fake_api_server() -> Iterator[tuple[FakeLLMAPI, LocalServer]]:
    api = FakeLLMAPI()
    with LocalServer(api.app, on_stop=api.close) as server:
        yield api, server


@pytest.fixture
def fake_api(fake_api_server: tuple[FakeLLMAPI, LocalServer]) -> Iterator[FakeLLMAPI]:
    api, _ = fake_api_server
    api.reset()
    api.hold = None
    api.gate = None
    yield api
    # Nothing a test left closed may hold the next one.
    for event in (api.hold, api.gate):
        if event is not None:
            event.set()
    api.hold = None
    api.gate = None


@pytest.fixture(scope="session")
def dead_url() -> str:
    """A loopback port that refuses connections."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def gateway(
    fake_api_server: tuple[FakeLLMAPI, LocalServer],
    _upstream_server: tuple[Upstream, LocalServer],
    dead_url: str,
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        "--route",
        f"/fake={fake_api_server[1].url}",
        "--route",
        f"/up={_upstream_server[1].url}",
        "--route",
        f"/dead={dead_url}",
        "--max-request-body",
        "65536",
    )
    yield process
    process.close()


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayProcess]]:
    """Gateways with flags of their own, stopped after the test."""
    started: list[GatewayProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        descriptors: int | None = None,
        server: tuple[str, ...] = ("-m", "httpx_coalesce", "serve"),
    ) -> GatewayProcess:
        process = GatewayProcess(*args, env=env, descriptors=descriptors, server=server)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture(scope="session")
def hostile_upstream() -> Iterator[HostileUpstream]:
    upstream = HostileUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def hostile(hostile_upstream: HostileUpstream) -> HostileUpstream:
    hostile_upstream.reset()
    return hostile_upstream


@pytest.fixture(scope="session")
def hostile_gateway(hostile_upstream: HostileUpstream) -> Iterator[GatewayProcess]:
    """A gateway in front of the misbehaving upstream (``/h``), and a second route (``/other``)
    to the same upstream, to try escaping from one route into another."""
    process = GatewayProcess(
        "--route",
        f"/h={hostile_upstream.url}/base",
        "--route",
        f"/other={hostile_upstream.url}/secret",
        "--no-access-log",
    )
    yield process
    process.close()
