"""The topologies the fleet tests run on come up whole (tests/redis/servers.py)."""

from __future__ import annotations

import redis.sentinel

from .servers import Cluster, Node, Sentinel


def test_the_cluster_serves_every_slot_with_three_masters_and_three_replicas(redis_cluster: Cluster) -> None:
    assert len(redis_cluster.masters()) == 3
    assert len(redis_cluster.replicas()) == 3
    with redis_cluster.client() as client:
        client.set("servers-test:{a}", b"1", px=10_000)
        client.set("servers-test:{b}", b"2", px=10_000)
        assert client.get("servers-test:{a}") == b"1"
        assert client.get("servers-test:{b}") == b"2"
        client.delete("servers-test:{a}", "servers-test:{b}")


def test_the_sentinels_name_the_master_that_serves_writes(redis_sentinel: Sentinel) -> None:
    # redis.sentinel has no type annotations.
    sentinel = redis.sentinel.Sentinel(redis_sentinel.addresses, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    master = sentinel.master_for(redis_sentinel.service, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    master.set("servers-test:sentinel", b"1", px=10_000)
    assert redis_sentinel.current_master() is redis_sentinel.master
    assert master.get("servers-test:sentinel") == b"1"
    master.delete("servers-test:sentinel")
    master.close()


def test_the_valkey_server_is_valkey(valkey_server: Node) -> None:
    with valkey_server.client() as client:
        assert "valkey_version" in client.info("server")
