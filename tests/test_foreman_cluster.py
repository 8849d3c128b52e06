"""Foreman and the watchdog with real processes on a real Redis: capability routing to a GPU spore that
leaves and comes back, a kill -9 in the middle of 300 tasks, and two nexus processes retrying each zombie
exactly once (also across a leader's crash)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from hive_framework import ForemanAgent, HiveConfig, Kernel, TaskSpec, TaskStatus
from hive_framework.hive import Hive
from hive_framework.testing import NexusProcess, async_wait_until, delete_namespace

from .foreman_helpers import drop_jobs, isolated_config, make_zombies
from .integration_helpers import BASIC, assert_stays, wait_exit, wait_for_nodes

pytestmark = [pytest.mark.redis, pytest.mark.slow]

HEARTBEAT = 0.5
WATCHDOG = 1.0


@pytest.fixture
def hive_config(hive_redis_url: str, request: pytest.FixtureRequest) -> Iterator[HiveConfig]:
    """Fast settings in a private namespace; a test may override some with indirect parametrization."""
    overrides = {"heartbeat_interval": HEARTBEAT, "watchdog_interval": WATCHDOG, **getattr(request, "param", {})}
    config = isolated_config(hive_redis_url, arq=overrides.pop("arq", False), **overrides)
    yield config
    delete_namespace(hive_redis_url, config)


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


async def wait_all_final(hive: Hive, ids: list[str], timeout: float) -> list:
    async def final() -> list | None:
        tasks = await hive.broker.get_tasks(ids)
        return tasks if all(t is not None and t.is_terminal for t in tasks) else None

    return await async_wait_until(final, timeout=timeout, interval=0.05, what=f"{len(ids)} tasks to finish")


async def test_gpu_tasks_run_only_on_the_gpu_spore_and_wait_while_it_is_away(
    hive: Hive, spore_processes, nexus_processes
) -> None:
    # Given three spores, one declaring a GPU (and a tag), and a nexus to place parked work
    gpu_args = ("--capability", "gpu=true", "--tag", "cuda", "--capability", "vram_gb=24", "--capability", "zone=eu")
    for name in ("cpu-1", "cpu-2"):
        spore_processes(name, apps=(BASIC,), args=("--capability", "gpu=false"))
    gpu = spore_processes("gpu-1", apps=(BASIC,), args=gpu_args)
    nexus_processes("nexus")
    await wait_for_nodes(hive, ["cpu-1", "cpu-2", "gpu-1"])
    caps = {n.node_name: n.capabilities for n in await hive.nodes()}
    assert (caps["gpu-1"]["gpu"], caps["gpu-1"]["tags"]) == (True, ["cuda"])
    assert (caps["gpu-1"]["vram_gb"], caps["gpu-1"]["zone"]) == (24, "eu")  # JSON values; a bare word is a string
    assert caps["cpu-1"]["gpu"] is False and caps["cpu-2"]["gpu"] is False

    # When GPU tasks and plain tasks are submitted together
    gpu_ids = [await hive.submit("echo", {"i": i}, requirements={"gpu": True}) for i in range(8)]
    plain_ids = [await hive.submit("echo", {"i": i}) for i in range(8)]
    done = await wait_all_final(hive, gpu_ids + plain_ids, timeout=20)

    # Then every one completes, and each GPU task ran on the GPU spore
    assert {t.status for t in done} == {TaskStatus.COMPLETED}
    assert {t.result["node"] for t in done[:8]} == {"gpu-1"}

    # When the GPU spore stops, and more GPU tasks arrive
    assert gpu.stop() == 0

    async def gpu_gone() -> bool:
        return "gpu-1" not in {n.node_name for n in await hive.nodes()}

    await async_wait_until(gpu_gone, what="gpu-1 to deregister")
    waiting_ids = [await hive.submit("echo", {"late": i}, requirements={"gpu": True}) for i in range(3)]

    # Then they wait, saying why, and stay waiting across several watchdog sweeps (no CPU spore takes them)
    for task in await hive.broker.get_tasks(waiting_ids):
        assert task.status == TaskStatus.WAITING
        assert task.reason == "waiting for an online node that serves `echo` and meets {'gpu': True}"

    async def all_waiting() -> bool:
        return {t.status for t in await hive.broker.get_tasks(waiting_ids)} == {TaskStatus.WAITING}

    await assert_stays(all_waiting, 2 * WATCHDOG + 0.2, "GPU tasks must wait while no GPU spore is online")
    assert (await hive.queue_stats())["tasks_waiting"] == 3

    # When the GPU spore comes back under its name
    back = spore_processes("gpu-1", apps=(BASIC,), args=gpu_args)

    # Then the nexus places the waiting tasks on it and they complete there
    late = await wait_all_final(hive, waiting_ids, timeout=20)
    assert [(t.status, t.result["node"], t.result["pid"]) for t in late] == [
        (TaskStatus.COMPLETED, "gpu-1", back.pid)
    ] * 3


async def test_kill_9_of_a_spore_in_the_middle_of_300_tasks_loses_nothing(
    hive: Hive, spore_processes, nexus_processes
) -> None:
    # Given three spores, a nexus and a Foreman watching the cluster
    spores = {name: spore_processes(name, apps=(BASIC,), concurrency=4) for name in ("keep-1", "keep-2", "victim")}
    nexus_processes("nexus")
    await wait_for_nodes(hive, list(spores))
    foreman = ForemanAgent(hive.broker)
    await foreman.start()
    try:
        # and 300 tasks of 50-100 ms each, every 25th a long one (3 s), so the kill surely cuts one off
        rng = random.Random(300)
        seconds = [3.0 if i % 25 == 12 else rng.uniform(0.05, 0.1) for i in range(300)]
        ids = await hive.submit_many([TaskSpec(task_type="nap", payload={"seconds": s}) for s in seconds])
        long_ids = {task_id for task_id, s in zip(ids, seconds, strict=True) if s > 1}

        # When the victim is killed with SIGKILL while it runs a long one, with work still queued
        async def victim_busy() -> list[str] | None:
            tasks = await hive.broker.get_tasks(ids)
            running = [t.task_id for t in tasks if t.status == TaskStatus.RUNNING and t.assigned_node == "victim"]
            completed = sum(t.status == TaskStatus.COMPLETED for t in tasks)
            return running if long_ids.intersection(running) and completed >= 30 else None

        cut_off = long_ids.intersection(
            await async_wait_until(victim_busy, timeout=20, what="the victim to be running a long task")
        )
        spores["victim"].kill()
        killed_at = time.monotonic()

        # Then Foreman shows it offline within the heartbeat timeout plus one watchdog interval
        async def victim_offline() -> dict | None:
            rows = {r["node_id"]: r for r in foreman.get_cluster_status()["nodes"]}
            return rows if "victim" in rows and not rows["victim"]["is_online"] else None

        await async_wait_until(victim_offline, timeout=10, what="Foreman to see the victim offline")
        offline_after = time.monotonic() - killed_at
        assert offline_after <= 3 * HEARTBEAT + WATCHDOG, f"offline only after {offline_after:.2f}s"
        status = foreman.get_cluster_status()
        assert (status["online_nodes"], status["offline_nodes"]) == (2, 1)

        # and every task completes: none failed, none left running
        done = await wait_all_final(hive, ids, timeout=30)
        assert Counter(t.status for t in done) == {TaskStatus.COMPLETED: 300}
        assert (await hive.queue_stats())["tasks_running"] == 0
        # and the tasks cut off on the victim ran again, to completion, on a surviving spore
        rerun = [t for t in done if t.result["starts"] >= 2]
        assert cut_off <= {t.task_id for t in rerun}, "a long task cut off on the victim did not run again"
        assert {t.result["node"] for t in rerun} <= {"keep-1", "keep-2"}
        assert all(t.attempt >= 2 for t in rerun)
    finally:
        await foreman.stop()


def zombie_lines(*nexuses: NexusProcess) -> Counter[str]:
    """Task ids the watchdogs of these nexus processes logged as zombies they acted on, with counts."""
    return Counter(
        match for nexus in nexuses for match in re.findall(r"zombie task (\S+) \(", nexus.log())
    )


async def leader_pid(hive: Hive) -> int:
    """The pid in the leader lease (``host:pid:nonce``)."""

    async def holder() -> bytes | None:
        return await hive.broker.redis.get(hive.broker.keys.nexus_leader)

    return int((await async_wait_until(holder, what="a nexus to take the leader lease")).decode().split(":")[-2])


@pytest.mark.parametrize(
    "hive_config", [{"lease_seconds": 60.0, "watchdog_interval": 0.3, "arq": True}], indirect=True, ids=["arq"]
)
async def test_two_nexus_processes_retry_each_zombie_exactly_once_even_across_a_leader_crash(
    hive: Hive, spore_processes, nexus_processes
) -> None:
    # Given twelve tasks recorded as running on a node that never beats, their ARQ jobs leased for a minute
    # (so ARQ's own lease cannot re-run them: only a watchdog can), and a spore to run what is requeued
    first = await make_zombies(hive, 12)
    spore_processes("worker", apps=(BASIC,), concurrency=4)
    try:
        # When two nexus processes run side by side
        nexuses = [nexus_processes("n1"), nexus_processes("n2")]
        done = await wait_all_final(hive, first, timeout=20)

        # Then each zombie was retried exactly once: attempt 2, its body run once, one watchdog log line
        assert [(t.status, t.attempt, t.result["starts"], t.result["node"]) for t in done] == [
            (TaskStatus.COMPLETED, 2, 1, "worker")
        ] * 12
        assert all(t.error is None for t in done)

        async def logged_once() -> bool:
            return zombie_lines(*nexuses) == Counter(dict.fromkeys(first, 1))

        await async_wait_until(logged_once, timeout=5, what="one zombie log line per task")
        # and only one of them, the lease holder, acted
        acting = [n for n in nexuses if zombie_lines(n)]
        assert len(acting) == 1, [n.log() for n in nexuses]
        leader, survivor = acting[0], next(n for n in nexuses if n is not acting[0])

        # When the leader is killed with SIGKILL (its lease is not released) and new zombies appear
        leader.kill()
        second = await make_zombies(hive, 12, node="ghost-2")

        # Then the other nexus takes the lease once it expires and retries each new zombie exactly once
        done = await wait_all_final(hive, second, timeout=20)
        assert [(t.status, t.attempt, t.result["starts"]) for t in done] == [(TaskStatus.COMPLETED, 2, 1)] * 12

        async def survivor_logged() -> bool:
            return zombie_lines(survivor) == Counter(dict.fromkeys(second, 1))

        await async_wait_until(survivor_logged, timeout=5, what="the surviving nexus to log each new zombie")
        assert await leader_pid(hive) == survivor.pid
        assert zombie_lines(leader, survivor) == Counter(dict.fromkeys(first + second, 1))
    finally:
        await drop_jobs(hive, await hive.broker.redis.zrange(hive.broker.keys.status_index("running"), 0, -1))


async def test_a_stopped_nexus_releases_its_lease(hive: Hive, nexus_processes) -> None:
    # Given a nexus holding the leader lease
    nexus = nexus_processes("solo")
    assert await leader_pid(hive) == nexus.pid
    # When it stops with SIGTERM, Then it exits cleanly and the lease is free at once for another nexus
    nexus.signal(15)
    assert await wait_exit(nexus) == 0
    assert await hive.broker.redis.get(hive.broker.keys.nexus_leader) is None
