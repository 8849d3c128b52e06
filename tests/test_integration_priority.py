"""Priorities on a real Redis: the high queue beats a background backlog across spore processes, and levels
0-10 order the tasks inside each queue."""

from __future__ import annotations

import asyncio
import random

import pytest

from hive_framework import Kernel, TaskSpec, TaskStatus

from .integration_helpers import BASIC, open_gate, order_list, wait_for_nodes, wait_for_order_length

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """The client (and in-process spores) know the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


@pytest.mark.slow
async def test_high_priority_task_starts_before_every_queued_background_task(hive, spore_processes):
    # The race window, honestly: a spore whose poll has just found the high queue empty may start a
    # background task an instant after a high task is enqueued; and two spores freeing a slot at the same
    # moment may start a background and the high task together. Neither is a broken guarantee, but either
    # would make a timing-based test flaky. So every slot is held by a "gated" task the test releases: the
    # backlog can only start once the test frees a slot, and it frees exactly one, after the high task is
    # queued. The freed slot must then take the high task over the older background work.

    # Given two spore processes with two slots each, every slot held by a gated background task
    nodes = ("prio-a", "prio-b")
    for name in nodes:
        spore_processes(name, apps=(BASIC,), concurrency=2)
    await wait_for_nodes(hive, nodes)
    blockers = [
        await hive.submit("gated", {"label": f"blocker-{i}", "gate": f"blocker-{i}"}) for i in range(4)
    ]
    await wait_for_order_length(hive, 4)
    # and a backlog of background tasks queued behind them
    backlog = await hive.submit_many(
        [TaskSpec(task_type="record", payload={"label": f"bg-{i}"}) for i in range(6)]
    )

    # When a high-priority task is enqueued after the whole backlog
    urgent = await hive.submit("record", {"label": "URGENT"}, priority="high_priority")
    stats = await hive.queue_stats()
    assert (stats["high_priority_queue"], stats["background_queue"]) == (1, 4 + 6)
    assert sorted(await order_list(hive)) == [f"blocker-{i}" for i in range(4)], "nothing else can have started"
    # and exactly one slot is freed
    await open_gate(hive, "blocker-0")

    # Then the freed slot starts the high-priority task before any of the queued background tasks
    started = await wait_for_order_length(hive, 5)
    assert started[4] == "URGENT", started
    # and once every slot is free the backlog runs to completion after it
    for i in range(1, 4):
        await open_gate(hive, f"blocker-{i}")
    finished = await asyncio.gather(*(hive.wait(t, timeout=30) for t in [*blockers, *backlog, urgent]))
    assert {m.status for m in finished} == {TaskStatus.COMPLETED}
    final = await order_list(hive)
    assert sorted(final[5:]) == sorted(f"bg-{i}" for i in range(6))
    # and both spore processes took part (each held two of the four blockers)
    assert {m.assigned_node for m in finished[:4]} == set(nodes)


async def test_priority_levels_order_tasks_inside_each_queue(hive, run_spore):
    # Given one spore with one slot, held by a gated task
    await run_spore(name="levels", concurrency=1)
    blocker = await hive.submit("gated", {"label": "blocker", "gate": "blocker"})
    await wait_for_order_length(hive, 1)
    # When tasks of every level 0-10 are queued in shuffled order (0-4 go to the background queue, 5-10 high)
    levels = list(range(11))
    random.Random(20240611).shuffle(levels)
    ids = await hive.submit_many(
        [TaskSpec(task_type="record", payload={"label": f"L{level}"}, priority=level) for level in levels]
    )
    stats = await hive.queue_stats()
    assert stats["high_priority_queue"] == 6
    assert stats["background_queue"] == 5 + 1  # the running blocker's job stays queued until it finishes
    # and the slot is freed
    await open_gate(hive, "blocker")

    # Then they start strictly from the highest level to the lowest
    finished = await asyncio.gather(*(hive.wait(t, timeout=20) for t in [blocker, *ids]))
    assert {m.status for m in finished} == {TaskStatus.COMPLETED}
    assert await order_list(hive) == ["blocker", *(f"L{level}" for level in range(10, -1, -1))]
    assert {m.priority for m in finished[1:]} == set(range(11))

