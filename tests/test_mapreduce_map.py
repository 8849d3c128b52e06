"""Hive.map / Hive.map_stream on a real Redis: input order, chunking, timeouts, and 1,000 items on two spore
processes, each item reported exactly once."""

from __future__ import annotations

import asyncio
import collections
from datetime import UTC, datetime, timedelta

import pytest

from hive_framework import Kernel, TaskFailed, TaskStatus, WaitTimeout
from hive_framework.errors import InvalidTask
from hive_framework.jobs import MapJob
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, wait_for_nodes

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """Client and in-process spores know the test task types; installed plugins (scrape...) stay out of it."""
    return Kernel(hive_config, apps=[BASIC], load_entry_points=False)


async def finished_tasks(hive) -> int:
    stats = await hive.queue_stats()
    return stats["tasks_completed"] + stats["tasks_failed"]


async def test_map_returns_results_in_input_order_and_failures_in_place(hive, run_spore):
    # Given a spore with a slot per item, and items whose later ones finish first; item 2 fails
    await run_spore(name="mapper", concurrency=6)
    items = [{"value": i, "seconds": round((5 - i) * 0.03, 2), "fail": i == 2} for i in range(6)]

    # When they are mapped with return_exceptions=True
    results = await hive.map("mr_item", items, timeout=20, return_exceptions=True)

    # Then each result sits at its item's index, the failure as a TaskFailed with the item's error
    assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4, 5]
    assert isinstance(results[2], TaskFailed)
    assert results[2].status == "failed"
    assert results[2].error == "ValueError: item 2 fails on purpose"

    # When the same items are mapped without return_exceptions
    # Then the failure is raised, like asyncio.gather
    with pytest.raises(TaskFailed, match="item 2 fails on purpose"):
        await hive.map("mr_item", items, timeout=20)

    # When nothing is mapped
    # Then the answer is an empty list, at once
    assert await hive.map("mr_item", [], timeout=1) == []


async def test_chunk_size_gives_the_same_results_with_fewer_tasks(hive, run_spore):
    # Given a spore, and ten items of which one fails (dicts) plus five plain strings
    await run_spore(name="chunker", concurrency=4)
    items = [{"value": i, "seconds": 0.01 * (i % 3), "fail": i == 3} for i in range(10)]
    words = ["a", "bb", "ccc", "dddd", "eeeee"]

    # When they are mapped one item per task
    before = await finished_tasks(hive)
    single = await hive.map("mr_item", items, timeout=20, return_exceptions=True)
    single_words = await hive.map("mr_length", words, timeout=20)
    single_tasks = await finished_tasks(hive) - before

    # and again four items per task
    before = await finished_tasks(hive)
    chunked = await hive.map("mr_item", items, timeout=20, chunk_size=4, return_exceptions=True)
    chunked_words = await hive.map("mr_length", words, timeout=20, chunk_size=4)
    chunked_tasks = await finished_tasks(hive) - before

    # Then the results are the same, in the same order, the failed item failing alone
    def plain(results):
        return [("failed", r.error) if isinstance(r, TaskFailed) else r for r in results]

    assert plain(chunked) == plain(single) == [0, 1, 2, ("failed", "ValueError: item 3 fails on purpose"),
                                               4, 5, 6, 7, 8, 9]
    assert chunked_words == single_words == [1, 2, 3, 4, 5]
    # and far fewer tasks ran: ceil(10/4) + ceil(5/4) instead of 10 + 5
    assert single_tasks == 15
    assert chunked_tasks == 3 + 2


async def test_map_with_a_delay_schedules_every_item_for_one_moment_then_runs_them(hive, run_spore):
    # Given a spore, and items mapped with a delay
    await run_spore(name="later", concurrency=4)
    items = [{"value": i, "seconds": 0} for i in range(4)]
    before = datetime.now(UTC)
    mapping = asyncio.create_task(hive.map("mr_item", items, timeout=30, delay=1.0))
    scheduled = hive.broker.keys.status_index(TaskStatus.SCHEDULED)

    # Then every item's task is stored at once as scheduled, all due at one moment a delay from now
    async def all_scheduled() -> list[str]:
        ids = [i.decode() for i in await hive.broker.redis.zrange(scheduled, 0, -1)]
        return ids if len(ids) == len(items) else []

    ids = await async_wait_until(all_scheduled, timeout=10, what="the items' tasks to be scheduled")
    waiting = await hive.broker.get_tasks(ids)
    assert all(m.status == TaskStatus.SCHEDULED for m in waiting)
    (eta,) = {m.eta for m in waiting}
    assert eta is not None and before + timedelta(seconds=1) <= eta <= datetime.now(UTC) + timedelta(seconds=1)

    # and when they are due they run, each once, no sooner, and map returns their results in order
    assert await mapping == [0, 1, 2, 3]
    for done in await hive.broker.get_tasks(ids):
        assert done.status == TaskStatus.COMPLETED and done.attempt == 1
        assert done.started_at is not None and done.started_at >= eta


async def test_map_with_a_bad_delay_or_eta_refuses_by_name_and_stores_nothing(hive):
    # When items are mapped with a negative delay, both delay and eta, or an eta without a time zone
    for bad in ({"delay": -1}, {"delay": 1, "eta": datetime.now(UTC)}, {"eta": datetime(2030, 1, 1)}):
        with pytest.raises(InvalidTask, match=r"delay|eta"):
            await hive.map("mr_item", [{"value": 1}], timeout=1, **bad)
    # Then no task was stored
    assert await finished_tasks(hive) == 0
    stats = await hive.queue_stats()
    assert (stats["tasks_scheduled"], stats["tasks_pending"]) == (0, 0)


async def test_map_timeout_raises_wait_timeout_naming_the_unfinished_items(hive):
    # Given no spore at all
    # When three items are mapped with a short timeout
    # Then WaitTimeout says how many are unfinished
    with pytest.raises(WaitTimeout, match=r"3 of 3 items unfinished after 0.2s"):
        await hive.map("mr_item", [{"value": i} for i in range(3)], timeout=0.2)
    # and the tasks go on: still pending (cancelled here, which drops their engine jobs, kept outside the namespace)
    pending = await hive.broker.redis.zrange(hive.broker.keys.status_index(TaskStatus.PENDING), 0, -1)
    assert len(pending) == 3
    for task_id in pending:
        assert await hive.cancel(task_id.decode())


async def test_cancel_unfinished_reports_an_item_that_finished_as_the_wait_timed_out(hive):
    # Given a submitted job of three items whose wait timed out with none seen finished (no spore)
    job = MapJob(hive.broker, "mr_item", [{"value": i} for i in range(3)])
    ids = await job.submit()
    outcomes = [o async for o in job.stream(timeout=0)]
    assert outcomes == []
    # and the second item's task completes just then
    await hive.broker.update_task_status(ids[1], "completed", result=1)

    # When the unfinished items are cancelled
    await job.cancel_unfinished()

    # Then the item that had finished is reported completed (with its result), the others cancelled
    assert [(o.status, o.result) for o in job.ordered()] == [("cancelled", None), ("completed", 1), ("cancelled", None)]
    stored = await hive.broker.get_tasks(ids)
    assert [m.status for m in stored] == [TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.CANCELLED]


@pytest.mark.slow
async def test_a_thousand_items_on_two_spore_processes_all_come_back_each_once(hive, hive_config, spore_processes):
    # Given two spore processes with 50 slots each, both online
    for name in ("mr-a", "mr-b"):
        spore_processes(name, apps=(BASIC,), concurrency=50)
    await wait_for_nodes(hive, ["mr-a", "mr-b"], timeout=30)
    items = [{"value": i} for i in range(1000)]

    # When 1,000 items are mapped
    results = await hive.map("mr_item", items, timeout=60)

    # Then every result came back, in input order
    assert results == list(range(1000))

    # When 1,000 more are streamed
    seen = collections.Counter()
    nodes = set()
    async for outcome in hive.map_stream("mr_item", [{"value": 1000 + i} for i in range(1000)], timeout=60):
        assert outcome.ok, outcome
        assert outcome.result == 1000 + outcome.item_index
        seen[outcome.item_index] += 1
        nodes.add(outcome.node)

    # Then each index was yielded exactly once, and both spores did part of the work
    assert sorted(seen) == list(range(1000))
    assert set(seen.values()) == {1}
    assert nodes == {"mr-a", "mr-b"}
