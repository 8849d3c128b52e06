"""``hive health``: the probe the compose file and the Kubernetes manifests run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from hive_framework.config import HiveConfig
from hive_framework.health import check_health
from hive_framework.testing import NexusProcess, SporeProcess, wait_until

pytestmark = pytest.mark.redis


def hive_health(config: HiveConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env.update(config.to_env())
    return subprocess.run([sys.executable, "-m", "hive_framework", "health", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_redis_only(hive_config: HiveConfig) -> None:
    assert hive_health(hive_config).returncode == 0
    down = hive_config.evolve(redis_url="redis://127.0.0.1:1/0")
    result = hive_health(down)
    assert result.returncode == 1 and "does not answer" in result.stderr


def test_spore_heartbeat(hive_config: HiveConfig, spore_processes: Callable[..., SporeProcess]) -> None:
    assert not check_health(hive_config, spore="probe-1").ok
    spore = spore_processes("probe-1")
    wait_until(lambda: check_health(hive_config, spore="probe-1").ok, timeout=30, what="the spore's first beat")
    assert hive_health(hive_config, "--spore", "probe-1").returncode == 0
    assert hive_health(hive_config, "--spore-here").returncode == 0
    missing = hive_health(hive_config, "--spore", "someone-else")
    assert missing.returncode == 1 and "no live heartbeat" in missing.stderr
    # a beat older than the limit is stale (max-age shorter than the heartbeat interval of 0.3 s)
    assert not check_health(hive_config, spore="probe-1", max_age=0.0).ok
    assert spore.stop() == 0, spore.log()[-3000:]
    assert hive_health(hive_config, "--spore", "probe-1").returncode == 1, spore.log()[-3000:]


def test_nexus_lease(hive_config: HiveConfig) -> None:
    config = hive_config.evolve(watchdog_interval=0.3)
    assert hive_health(config, "--nexus").returncode == 1
    nexus = NexusProcess(config, "probe-nexus")
    try:
        wait_until(lambda: check_health(config, nexus=True).ok, timeout=30, what="a nexus to lead")
        assert hive_health(config, "--nexus").returncode == 0
    finally:
        code = nexus.stop()
    assert code == 0, nexus.log()[-3000:]
    # a stopping nexus gives its lease back
    assert not check_health(config, nexus=True).ok, nexus.log()[-3000:]
