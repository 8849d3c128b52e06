"""A balancer strategy from a third-party distribution, installed for real and chosen with HIVE_BALANCER.

``tests/plugin_dist/hive-balancer-example`` is a separate project (its own pyproject.toml) whose entry point
``last_id`` (group ``hive_framework.plugins``) routes each task to the eligible node whose id sorts last. As
in tests/test_third_party_plugin.py it is pip-installed into a temporary target directory and reached
through PYTHONPATH by subprocesses only: this test process never imports it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_framework import HiveConfig, Kernel, MessageBroker, wire
from hive_framework.errors import EXIT_CONFIG
from hive_framework.models import NodeInfo

from .foreman_helpers import isolated_namespace
from .integration_helpers import REPO_ROOT, cli_env

DIST = Path(__file__).parent / "plugin_dist" / "hive-balancer-example"

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """A private namespace on the test Redis, without entry-point plugins (see foreman_helpers)."""
    yield from isolated_namespace(hive_redis_url)

#: Routes one task needing the "ml" tag, with the strategy HIVE_BALANCER names, and prints what happened.
ROUTE_SCRIPT = """
import asyncio, json
from hive_framework import ForemanAgent, Kernel, MessageBroker

async def main():
    kernel = Kernel()
    async with MessageBroker(kernel) as broker:
        foreman = ForemanAgent(broker)
        await foreman.refresh()
        best = foreman.select_best_node({"tags": ["ml"]})
        task_id = await broker.enqueue_task("echo", {}, requirements={"tags": ["ml"]})
        task = await broker.get_task_status(task_id)
        await broker.cancel_task(task_id)
        print(json.dumps({"best": best, "assigned": task.assigned_node, "queue": task.queue,
                          "balancers": kernel.balancers()}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def balancer_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH entry under which the example distribution is installed ('' if already installed)."""
    try:
        importlib.metadata.distribution("hive-balancer-example")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        return ""
    target = tmp_path_factory.mktemp("balancer-target")
    build = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         *build, "--target", str(target), str(DIST)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("hive_balancer_example-*.dist-info")), "pip did not install a distribution"
    return str(target)


def env_for(config: HiveConfig, balancer_path: str, **extra: str) -> dict[str, str]:
    """A client environment with the example installed; other installed plugins are not loaded (allow-list)."""
    env = cli_env(config)
    env["PYTHONPATH"] = str(REPO_ROOT) + (f":{balancer_path}" if balancer_path else "")
    env["HIVE_LOAD_PLUGINS"] = "last_id"
    env.update(extra)
    return env


async def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


async def write_heartbeats(config: HiveConfig) -> None:
    """Four spores serving ``echo`` in Redis: two tagged ml (the idle one sorts first), one untagged, one paused."""
    broker = MessageBroker(Kernel(config))
    await broker.connect()
    try:
        for info in (
            NodeInfo(node_id="node-a", node_name="node-a", task_types=["echo"], host="h", pid=1, concurrency=4,
                     capabilities={"tags": ["ml"]}),
            NodeInfo(node_id="node-m", node_name="node-m", task_types=["echo"], host="h", pid=2, concurrency=4,
                     active_tasks=4, cpu_usage=95.0, memory_usage=90.0, capabilities={"tags": ["ml"]}),
            NodeInfo(node_id="node-x", node_name="node-x", task_types=["echo"], host="h", pid=3, concurrency=4),
            NodeInfo(node_id="node-z", node_name="node-z", task_types=["echo"], host="h", pid=4, concurrency=4,
                     paused=True, capabilities={"tags": ["ml"]}),
        ):
            data = wire.dumps(info)
            await broker.redis.psetex(broker.keys.node(info.node_id), 60_000, data)
            await broker.redis.sadd(broker.keys.nodes, info.node_id)
            await broker.redis.hset(broker.keys.node_infos, mapping={info.node_id: data})
    finally:
        await broker.disconnect()


def test_the_distribution_declares_its_strategy_entry_point() -> None:
    # Given the example's source tree, Then it is a project of its own declaring the strategy's entry point
    text = (DIST / "pyproject.toml").read_text()
    assert 'name = "hive-balancer-example"' in text
    assert '[project.entry-points."hive_framework.plugins"]' in text
    assert 'last_id = "hive_balancer_example"' in text
    # and this process does not have it: only the subprocesses below do
    assert importlib.util.find_spec("hive_balancer_example") is None


async def test_hive_balancer_names_the_installed_strategy_and_it_routes(hive_config, balancer_path) -> None:
    # Given the distribution installed, and four spores' heartbeats (node-m tagged ml, loaded, sorting last
    # among the eligible; node-a tagged ml and idle; node-x untagged; node-z paused)
    await write_heartbeats(hive_config)

    # When a process routes a task needing "ml" with HIVE_BALANCER=last_id
    proc = await run(env_for(hive_config, balancer_path, HIVE_BALANCER="last_id"), "-c", ROUTE_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads(proc.stdout)

    # Then the plugin's strategy decided: the last eligible id, not the paused node-z, not the idle node-a
    assert chosen["best"] == "node-m"
    assert chosen["assigned"] == "node-m"
    assert chosen["queue"] == f"{hive_config.key_prefix}:tasks:node:node-m"
    assert chosen["balancers"] == ["last_id", "least_tasks", "load_score", "round_robin"]

    # And with the default strategy the same process picks the idle node instead
    default = await run(env_for(hive_config, balancer_path), "-c", ROUTE_SCRIPT)
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["best"] == "node-a"


async def test_hive_status_and_plugins_run_with_the_plugin_strategy(hive_config, balancer_path) -> None:
    # Given the distribution installed and four spores' heartbeats
    await write_heartbeats(hive_config)
    env = env_for(hive_config, balancer_path, HIVE_BALANCER="last_id")
    # When `hive status --json` runs with the plugin's strategy in charge, Then it starts and sees the cluster
    status = await run(env, "-m", "hive_framework", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["online_nodes"] == 4
    # and `hive plugins` lists the strategy by entry-point name with its distribution's version
    plugins = await run(env, "-m", "hive_framework", "plugins", "--hook", "route_task")
    assert plugins.returncode == 0, plugins.stderr
    rows = {row["name"]: row for row in json.loads(plugins.stdout)}
    assert rows["last_id"]["version"] == "0.2.0"
    assert rows["last_id"]["hooks"] == ["route_task"]


@pytest.mark.parametrize("command", [["status"], ["nexus"], ["dead"]])
async def test_an_unknown_balancer_stops_the_cli_with_one_line_listing_the_strategies(
    hive_config, balancer_path, command
) -> None:
    # Given HIVE_BALANCER naming nothing installed
    env = env_for(hive_config, balancer_path, HIVE_BALANCER="fastest")
    # When a hive command starts
    proc = await run(env, "-m", "hive_framework", *command)
    # Then it exits non-zero with one line naming the bad value and every installed strategy, plugin's included
    assert proc.returncode == EXIT_CONFIG  # a plugin setting that cannot load
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "'fastest'" in lines[0]
    assert "installed: last_id, least_tasks, load_score, round_robin" in lines[0]
