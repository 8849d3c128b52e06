"""Redis Cluster: a 3-primary cluster on loopback (``redis-cli --cluster create``); the engine contract suite
passes with each test's hive in its own hash slot, and hives with different prefixes land on different primaries."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hive_framework.config import HiveConfig
from hive_framework.connection import redis_client
from hive_framework.errors import ConfigError
from hive_framework.testing import wait_until

from .redis_servers import RedisProcess, cluster_port, need

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ``redis+cluster://`` URL of three primaries, no replicas, all slots covered."""
    tmp = tmp_path_factory.mktemp("cluster")
    nodes = [RedisProcess(tmp, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                "--cluster-node-timeout", "5000", "--appendonly", "no"], name=f"node{i}",
                          port=cluster_port())
             for i in range(3)]
    try:
        for node in nodes:
            node.wait_listening()
        made = subprocess.run([need("redis-cli"), "--cluster", "create",
                               *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert made.returncode == 0, made.stdout + made.stderr

        def ok() -> bool:
            states = []
            for node in nodes:
                client = redis.Redis(port=node.port, socket_timeout=2)
                info = client.execute_command("CLUSTER INFO")  # a dict once redis-py parsed it, else the text
                states.append(info.get("cluster_state") in ("ok", b"ok") if isinstance(info, dict)
                              else b"cluster_state:ok" in info)
                client.close()
            return all(states)

        wait_until(ok, timeout=60, interval=0.2, what="cluster_state:ok on every node")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    finally:
        for node in nodes:
            node.stop()


def test_engine_contract_suite_on_a_cluster(cluster: str) -> None:
    # Given a 3-primary cluster; when the engine contract suite runs on it (each test's hive is a hash tag)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env.update({"HIVE_TEST_REDIS_URL": cluster, "HIVE_REQUIRE_REDIS": "1"})
    if os.environ.get("HIVE_TEST_BROKER"):
        env["HIVE_TEST_BROKER"] = os.environ["HIVE_TEST_BROKER"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_engine_contract.py"],
                         env=env, capture_output=True, text=True, timeout=900, check=False)
    print(run.stdout.splitlines()[-1] if run.stdout else run.stderr)
    # Then it passes
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


async def test_hives_spread_over_primaries_and_untagged_prefixes_are_refused(cluster: str) -> None:
    ports = set()
    for name in ("shop", "mail", "search", "billing", "media", "ads"):
        config = HiveConfig(redis_url=cluster, key_prefix=f"{{{name}}}", high_priority_queue=f"{{{name}}}:high",
                            background_queue=f"{{{name}}}:background")
        client = redis_client(config)
        try:
            await client.set(f"{{{name}}}:probe", "1")  # a MOVED error here would mean the wrong primary
            ports.add(client.connection_pool.connection_kwargs["port"])
        finally:
            await client.aclose()
    assert len(ports) >= 2, "six hives all landed on one primary"
    with pytest.raises(ConfigError, match="must be a hash tag"):
        redis_client(HiveConfig(redis_url=cluster, key_prefix="shop"))
    with pytest.raises(ConfigError, match="queues must be under the key prefix"):
        redis_client(HiveConfig(redis_url=cluster, key_prefix="{shop}"))


def test_cluster_url_is_a_setting(tmp_path: Path) -> None:
    assert HiveConfig(redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001").redis_url.startswith("redis+cluster")
