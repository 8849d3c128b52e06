"""`hive status`, `hive dead` and `hive retry` as a user runs them: separate processes on a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from hive_framework import HiveConfig, Kernel, TaskStatus
from hive_framework.hive import Hive

from .foreman_helpers import beat, isolated_namespace
from .integration_helpers import BASIC, hive_cli

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """A private namespace on the test Redis, without entry-point plugins (see foreman_helpers)."""
    yield from isolated_namespace(hive_redis_url)


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


async def make_dead_letters(hive: Hive) -> tuple[str, str]:
    """A task that failed for good, and a GPU task that waited past its timeout with no GPU online."""
    failed = await hive.submit("echo", {"n": 1})
    await hive.broker.cancel_task(failed)  # drop its engine job; then record the failure by hand
    await hive.broker.update_task_status(failed, "failed", error="RuntimeError: boom")
    expired = await hive.submit("echo", {"n": 2}, requirements={"gpu": True}, timeout=1)
    counts = await hive.broker.reroute_stranded(now=time.time() + 5)
    assert counts["expired"] == 1
    return failed, expired


async def test_hive_status_json_shows_online_offline_nodes_and_queues(hive: Hive, hive_config) -> None:
    # Given one live spore heartbeat, one spore whose heartbeat expired, and a task waiting for a GPU
    await beat(hive, "alive", gpu=False)
    await beat(hive, "lost", online=False, gpu=True)
    await hive.submit("echo", {}, requirements={"gpu": True})

    # When `hive status --json` runs
    proc = await hive_cli(hive_config, "status", "--json")

    # Then it prints the cluster as JSON: one of two nodes online, the lost one flagged, the waiting task counted
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["total_nodes"], data["online_nodes"], data["offline_nodes"]) == (2, 1, 1)
    assert {n["node_id"]: n["is_online"] for n in data["nodes"]} == {"alive": True, "lost": False}
    assert {"load_score", "active_tasks", "capabilities", "last_heartbeat", "paused"} <= set(data["nodes"][0])
    assert data["queues"]["tasks_waiting"] == 1


async def test_hive_status_table_marks_the_lost_node(hive: Hive, hive_config) -> None:
    # Given a live spore and a lost one
    await beat(hive, "alive")
    await beat(hive, "lost", online=False)
    # When `hive status` prints its table
    proc = await hive_cli(hive_config, "status")
    # Then the summary counts one of two online, and the lost node's row says OFFLINE
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("nodes 1/2 online")
    assert any(line.startswith("lost") and "OFFLINE" in line for line in lines)
    assert any(line.startswith("alive") and "online" in line for line in lines)
    assert lines[-1].startswith("queues: ")


async def test_hive_dead_lists_failed_tasks_and_retry_all_dead_runs_them_again(
    hive: Hive, hive_config, run_spore
) -> None:
    # Given an empty dead-letter list, `hive dead` says so
    empty = await hive_cli(hive_config, "dead")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no dead letters")
    # Given a task that failed for good and a GPU task that waited past its timeout
    failed, expired = await make_dead_letters(hive)

    # When `hive dead` runs, Then both are listed, newest first, with their errors
    table = await hive_cli(hive_config, "dead")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [expired, failed]
    assert "RuntimeError: boom" in lines[1]
    assert "no online node met {'gpu': True} within 1s" in lines[0]
    as_json = await hive_cli(hive_config, "dead", "--json")
    assert [t["task_id"] for t in json.loads(as_json.stdout)] == [expired, failed]
    assert {t["status"] for t in json.loads(as_json.stdout)} == {"failed"}

    # When `hive retry --all-dead` runs
    retried = await hive_cli(hive_config, "retry", "--all-dead")

    # Then both are requeued from scratch and the dead-letter list is empty
    assert retried.returncode == 0, retried.stderr
    assert sorted(retried.stdout.splitlines()) == sorted([f"{failed}  requeued", f"{expired}  requeued"])
    assert await hive.broker.dead_letters() == []
    again = {t.task_id: t for t in await hive.broker.get_tasks([failed, expired])}
    assert (again[failed].status, again[failed].attempt, again[failed].error) == (TaskStatus.PENDING, 0, None)
    # and the GPU task, still without a GPU node, waits again instead of failing
    assert again[expired].status == TaskStatus.WAITING
    # and a spore runs the other one to completion
    await run_spore(name="rescuer", concurrency=1)
    done = await hive.wait(failed, timeout=15)
    assert (done.status, done.attempt, done.result["node"]) == (TaskStatus.COMPLETED, 1, "rescuer")

    # And retrying a completed or unknown task is refused, exit status 1
    refused = await hive_cli(hive_config, "retry", failed, "no-such-task")
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == [
        f"{failed}  not retried (unknown or already completed)",
        "no-such-task  not retried (unknown or already completed)",
    ]
    await hive.cancel(expired)


async def test_hive_retry_without_ids_is_a_usage_error(hive_config) -> None:
    # Given no task ids and no --all-dead, When `hive retry` runs, Then it is a usage error, no traceback
    proc = await hive_cli(hive_config, "retry")
    assert proc.returncode == 2
    assert "name TASK_ID(s) or pass --all-dead" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad", ["gpu", "=true"])
async def test_hive_spore_refuses_a_capability_without_key_or_value(hive_config, bad: str) -> None:
    # Given a malformed --capability, When `hive spore` starts, Then it refuses it in one line, exit status 2
    proc = await hive_cli(hive_config, "spore", "--name", "never-starts", "--capability", bad)
    assert proc.returncode == 2
    assert f"expected KEY=VALUE, got '{bad}'" in proc.stderr
    assert "Traceback" not in proc.stderr
