"""Losing spores on a real Redis: kill -9 and SIGTERM mid-task lose nothing, and a zombie task of a dead
node is found and retried by hand under a fresh engine job id."""

from __future__ import annotations

import signal
import time

import pytest

from hive_framework import Kernel, TaskStatus
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, wait_exit, wait_for_nodes, wait_nap_started, wait_running

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def hive_kernel(hive_config):
    """The client knows the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


async def test_task_of_a_killed_spore_runs_again_and_completes_on_another(hive, spore_processes):
    # Given a spore running a long task (it naps on its first start only)
    victim = spore_processes("victim", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["victim"])
    task_id = await hive.submit("nap", {"seconds": 60, "first_only": True})
    await wait_nap_started(hive, task_id, "victim")
    # and a second, idle spore that must leave the leased job alone while its owner lives
    rescuer = spore_processes("rescuer", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["victim", "rescuer"])
    assert (await hive.status(task_id)).assigned_node == "victim"

    # When the first spore is killed with SIGKILL mid-task
    victim.kill()

    # Then, once its lease runs out, the task runs again on the other spore and completes there
    done = await hive.wait(task_id, timeout=20)
    assert done.status == TaskStatus.COMPLETED
    assert done.assigned_node == "rescuer"
    assert done.result == {"node": "rescuer", "pid": rescuer.pid, "attempt": 2, "starts": 2}
    # and no task is left marked running
    assert (await hive.queue_stats())["tasks_running"] == 0


async def test_sigterm_lets_a_short_task_finish_within_the_grace_period(hive, spore_processes):
    # Given a spore with a 10 s grace period, running a 1 s task, with a second task queued behind it
    spore = spore_processes("graceful", apps=(BASIC,), concurrency=1, extra_env={"HIVE_SHUTDOWN_GRACE": "10"})
    await wait_for_nodes(hive, ["graceful"])
    short = await hive.submit("nap", {"seconds": 1})
    await wait_running(hive, short, "graceful")
    queued = await hive.submit("nap", {"seconds": 1})

    # When the spore gets SIGTERM mid-task
    spore.signal(signal.SIGTERM)

    # Then the running task completes on that spore during the grace period
    done = await hive.wait(short, timeout=15)
    assert done.status == TaskStatus.COMPLETED
    assert done.result == {"node": "graceful", "pid": spore.pid, "attempt": 1, "starts": 1}
    # and the spore exits cleanly, deregistered, without taking the queued task
    assert await wait_exit(spore) == 0
    assert await hive.nodes() == []
    left = await hive.status(queued)
    assert (left.status, left.attempt, left.started_at) == (TaskStatus.PENDING, 0, None)
    assert (await hive.queue_stats())["background_queue"] == 1
    await hive.cancel(queued)  # drop its engine job (not in the test namespace)


async def test_sigterm_hands_a_task_outlasting_the_grace_period_back_to_another_spore(hive, spore_processes):
    # Given a spore with a 0.5 s grace period running a task that needs a minute on its first start
    leaving = spore_processes("leaving", apps=(BASIC,), concurrency=1, extra_env={"HIVE_SHUTDOWN_GRACE": "0.5"})
    await wait_for_nodes(hive, ["leaving"])
    task_id = await hive.submit("nap", {"seconds": 60, "first_only": True})
    await wait_nap_started(hive, task_id, "leaving")
    # and a second, idle spore
    staying = spore_processes("staying", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["leaving", "staying"])

    # When the first spore gets SIGTERM
    began = time.monotonic()
    leaving.signal(signal.SIGTERM)

    # Then it exits cleanly soon after its grace period, handing the task back
    assert await wait_exit(leaving) == 0
    assert time.monotonic() - began < 0.5 + 5
    assert "handing 1 unfinished task(s) back to the queue" in leaving.log()
    # and the other spore runs it to completion; the interrupted run is not counted as a failed attempt
    done = await hive.wait(task_id, timeout=15)
    assert done.status == TaskStatus.COMPLETED
    assert done.result == {"node": "staying", "pid": staying.pid, "attempt": 1, "starts": 2}
    assert done.error is None


async def test_zombie_of_a_dead_node_is_detected_and_retried_under_a_fresh_engine_id(hive, spore_processes):
    # Given a spore running a long task
    doomed = spore_processes("doomed", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["doomed"])
    task_id = await hive.submit("nap", {"seconds": 60, "first_only": True})
    running = await wait_nap_started(hive, task_id, "doomed")
    assert await hive.broker.detect_zombie_tasks() == []  # its node is alive

    # When the spore dies without a word
    doomed.kill()

    # Then, once its heartbeat has expired, the task is reported as a zombie
    zombies = await async_wait_until(hive.broker.detect_zombie_tasks, timeout=10, what="a zombie task")
    assert [(z.task_id, z.status, z.assigned_node) for z in zombies] == [(task_id, TaskStatus.RUNNING, "doomed")]

    # When it is retried by hand
    assert await hive.retry(task_id) is True
    # Then it is pending again under a new engine job id (ARQ silently drops a job id it has seen), with the
    # old job gone from the queue so it cannot also run
    retried = await hive.status(task_id)
    assert (retried.status, retried.attempt, retried.assigned_node) == (TaskStatus.PENDING, 0, None)
    assert retried.engine_job_id != running.engine_job_id
    assert retried.engine_job_id.startswith(f"{task_id}.r")
    queued = {job for job, _ in await hive.broker.engine.queued_jobs(retried.queue)}
    assert retried.engine_job_id in queued
    if hive.config.broker == "arq":
        assert running.engine_job_id not in queued
    # (the streams broker leaves the old entry in place: the spore that reads it skips it, as its job id no
    # longer matches; "exactly once" below holds for both)
    # and a new spore runs it to completion, exactly once
    medic = spore_processes("medic", apps=(BASIC,), concurrency=1)
    done = await hive.wait(task_id, timeout=20)
    assert done.status == TaskStatus.COMPLETED
    assert done.result == {"node": "medic", "pid": medic.pid, "attempt": 1, "starts": 2}
    assert await hive.broker.detect_zombie_tasks() == []
