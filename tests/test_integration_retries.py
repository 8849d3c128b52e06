"""Retries and timeouts on a real Redis: attempts are counted, failures end with the last error, overrunning
tasks (async or blocking sync) fail with TaskTimeout, and the spore goes on serving."""

from __future__ import annotations

import asyncio
import time

import pytest

from hive_framework import Kernel, TaskStatus
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, wait_for_nodes

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """The client (and in-process spores) know the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


async def test_flaky_task_completes_on_third_attempt_and_hopeless_one_fails_with_last_error(hive, run_spore):
    # Given a spore with two slots
    await run_spore(name="retrier", concurrency=2)
    # When a task that fails twice and one that always fails (max_retries=2) are submitted together
    flaky = await hive.submit("flaky", {"failures": 2})
    hopeless = await hive.submit("always_fail", {})
    flaky_done, hopeless_done = await asyncio.gather(hive.wait(flaky, timeout=20), hive.wait(hopeless, timeout=20))

    # Then the flaky one completed on its third attempt, its earlier errors cleared
    assert flaky_done.status == TaskStatus.COMPLETED
    assert flaky_done.attempt == 3
    assert flaky_done.result == "ok after 2 failures"
    assert flaky_done.error is None
    # and the hopeless one failed after 1 + 2 retries, keeping the error of its last attempt
    assert hopeless_done.status == TaskStatus.FAILED
    assert hopeless_done.attempt == 3
    assert hopeless_done.error == "ValueError: always fails (attempt 3)"
    assert hopeless_done.completed_at is not None
    # and nothing is stuck: their jobs leave the queues (a moment after the final status is written), no
    # task is left running or retrying, and the spore still serves at once
    async def drained() -> dict[str, int] | None:
        stats = await hive.queue_stats()
        return stats if (stats["high_priority_queue"], stats["background_queue"]) == (0, 0) else None

    stats = await async_wait_until(drained, timeout=5, what="the finished jobs to leave the queues")
    assert (stats["tasks_running"], stats["tasks_retrying"], stats["tasks_pending"]) == (0, 0, 0)
    assert await hive.run("add", {"a": 2, "b": 3}, timeout=10) == 5


async def test_max_retries_zero_fails_on_first_error(hive, run_spore):
    # Given a spore
    await run_spore(name="no-retry", concurrency=1)
    # When a flaky task may not be retried
    task_id = await hive.submit("flaky", {"failures": 1}, max_retries=0)
    done = await hive.wait(task_id, timeout=10)
    # Then it fails after one attempt with its error
    assert (done.status, done.attempt) == (TaskStatus.FAILED, 1)
    assert done.error == "RuntimeError: planned failure 1"


@pytest.mark.slow
async def test_timeouts_stop_overrunning_async_and_blocking_sync_tasks(hive, spore_processes):
    # Given a spore process with a single slot
    spore = spore_processes("timekeeper", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["timekeeper"])

    # When an async task overruns its 0.5 s timeout
    began = time.monotonic()
    overrun = await hive.wait(
        await hive.submit("sleep_async", {"seconds": 30}, timeout=0.5, max_retries=0), timeout=15
    )
    # Then it fails with a TaskTimeout error, well before it would have finished
    assert overrun.status == TaskStatus.FAILED
    assert overrun.error == "TaskTimeout: task ran past its timeout of 0.5s"
    assert time.monotonic() - began < 5

    # When a sync task blocks its thread past its timeout
    began = time.monotonic()
    blocked = await hive.wait(
        await hive.submit("block_sync", {"seconds": 3}, timeout=0.5, max_retries=0), timeout=15
    )
    # Then it fails the same way, without waiting for the thread to return
    assert blocked.status == TaskStatus.FAILED
    assert blocked.error == "TaskTimeout: task ran past its timeout of 0.5s"
    assert time.monotonic() - began < 2.8

    # and the slot is free again: the same spore serves the next task while that thread still sleeps
    echoed = await hive.wait(await hive.submit("echo", {"after": "timeouts"}), timeout=10)
    assert echoed.status == TaskStatus.COMPLETED
    assert echoed.result == {"payload": {"after": "timeouts"}, "node": "timekeeper", "pid": spore.pid}
    assert spore.proc.poll() is None


@pytest.mark.slow
async def test_timed_out_attempt_is_retried_and_counted(hive, spore_processes):
    # Given a spore process
    spore_processes("retimer", apps=(BASIC,), concurrency=2)
    await wait_for_nodes(hive, ["retimer"])
    # When a task times out on every attempt and may be retried once
    done = await hive.wait(
        await hive.submit("sleep_async", {"seconds": 30}, timeout=0.3, max_retries=1), timeout=15
    )
    # Then it failed after two attempts, each stopped by its timeout
    assert (done.status, done.attempt) == (TaskStatus.FAILED, 2)
    assert done.error is not None and done.error.startswith("TaskTimeout")
