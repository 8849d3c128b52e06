"""``HIVE_PREFETCH`` (``hive spore --prefetch N``) on real spore processes: a spore whose tasks are quick begins up
to N tasks beyond its slots, yet never runs more handlers at once than its slots, and a stopping spore hands
every begun task back untouched."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from hive_framework import Hive, Kernel, TaskStatus
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, assert_stays, wait_exit, wait_for_nodes

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def hive_kernel(hive_config):
    """The client knows the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


async def test_a_prefetching_spore_never_runs_more_handlers_at_once_than_its_slots(hive: Hive, spore_processes):
    # Given a spore of 3 slots that may begin 6 tasks beyond them (on either engine: ARQ's worker ignores it)
    spore_processes("prefetching", apps=(BASIC,), concurrency=3, args=("--prefetch", "6"))
    await wait_for_nodes(hive, ["prefetching"])

    # When 90 quick tasks run on it
    seen = await hive.map("overlap", [{"seconds": 0.02}] * 90, timeout=60)

    # Then no handler ever saw more than 3 running, and the slots were used
    assert max(seen) == 3, Counter(seen)


async def test_a_quick_spore_begins_up_to_its_prefetch_and_hands_every_begun_task_back_when_it_stops(
    hive: Hive, spore_processes
) -> None:
    if hive.config.broker != "streams":
        pytest.skip("prefetch is a setting of the streams engine; the ARQ worker takes one job per slot")
    # Given a spore of 2 slots and a prefetch of 3, with a short grace period, that has run quick tasks
    far = spore_processes("far", apps=(BASIC,), concurrency=2, args=("--prefetch", "3"),
                          extra_env={"HIVE_SHUTDOWN_GRACE": "0.5"})
    await wait_for_nodes(hive, ["far"])
    assert await hive.map("add", [{"a": i, "b": 1} for i in range(20)], timeout=30) == list(range(1, 21))

    # When 8 tasks come that hold their slot until a gate opens
    ids = [await hive.submit("gated", {"label": f"g{i}", "gate": "open", "max_wait": 60}) for i in range(8)]
    order_key = f"{hive.config.key_prefix}:test:order"

    async def running() -> list[str]:
        return [t for t in ids if (await hive.status(t)).status == TaskStatus.RUNNING]

    async def five_begun_two_started() -> bool:
        return len(await running()) == 5 and await hive.broker.redis.llen(order_key) == 2

    # Then it begins 5 of them (its 2 slots and 3 more), runs 2, and goes no further
    await async_wait_until(five_begun_two_started, timeout=20, what="5 tasks begun and 2 started")
    await assert_stays(five_begun_two_started, 1.0, "5 tasks begun and 2 started")
    begun = await running()
    assert {(await hive.status(t)).assigned_node for t in begun} == {"far"}

    # When it stops with the 2 still held past its grace period
    far.signal(signal.SIGTERM)

    # Then it exits cleanly, handing all 5 back as they were before they began: none lost, none counted
    assert await wait_exit(far) == 0
    assert "handing 5 unfinished task(s) back to the queue" in far.log()
    for task_id in ids:
        left = await hive.status(task_id)
        assert (left.status, left.attempt, left.started_at) == (TaskStatus.PENDING, 0, None), task_id

    # and another spore runs every one once the gate opens; only the 2 that had started ran twice
    await hive.broker.redis.set(f"{hive.config.key_prefix}:test:gate:open", 1)
    spore_processes("near", apps=(BASIC,), concurrency=8)
    for task_id in ids:
        done = await hive.wait(task_id, timeout=30)
        assert (done.status, done.assigned_node, done.attempt) == (TaskStatus.COMPLETED, "near", 1)
    starts = Counter(label.decode() for label in await hive.broker.redis.lrange(order_key, 0, -1))
    assert sorted(starts.values()) == [1] * 6 + [2] * 2

