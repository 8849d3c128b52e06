"""Forgetting collected results: ``Hive.result(forget=True)``, ``Hive.map(forget=True)``, ``map_stream`` and
``Hive.forget`` delete completed tasks' records at once, and never a task that is live, failed, cancelled,
depended on, or whose record is not a completed one. Runs on the engine ``HIVE_TEST_BROKER`` names."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive_framework import Kernel, TaskStatus, wire
from hive_framework.broker import MessageBroker
from hive_framework.hive import Hive
from hive_framework.models import TaskMessage

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config: Any) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


async def kept(hive: Hive, *task_ids: str) -> list[bool]:
    """Whether each task's record is still in Redis."""
    redis, keys = hive.broker.redis, hive.broker.keys
    return [bool(await redis.exists(keys.task(t))) for t in task_ids]


async def test_collected_results_are_forgotten_and_nothing_else(hive: Hive, spore_processes: Any) -> None:
    # Given a spore process serving the basic app, and tasks in every state that must survive a forget
    spore_processes("forgetful", apps=(BASIC,), concurrency=4)
    failed = await hive.submit("always_fail", {}, max_retries=0)
    parent = await hive.submit("dag_step", {"label": "parent"})
    child = await hive.submit("dag_step", {"label": "child"}, depends_on=[parent])
    cancelled = await hive.submit("echo", {"n": 0}, delay=3600)
    assert await hive.cancel(cancelled)
    queued = await hive.submit("echo", {"n": 1}, delay=3600)
    for task_id in (failed, parent, child):
        await hive.wait(task_id, timeout=60)

    # When one result is read with forget=True (and another run with it)
    one = await hive.submit("echo", {"n": 2})
    assert (await hive.result(one, timeout=60, forget=True))["payload"] == {"n": 2}
    assert (await hive.run("echo", {"n": 3}, timeout=60, forget=True))["payload"] == {"n": 3}

    # Then its record, progress and completed-index entry are gone and it reads as unknown
    redis, keys = hive.broker.redis, hive.broker.keys
    assert await kept(hive, one) == [False]
    assert await hive.status(one) is None
    assert await redis.zscore(keys.status_index(TaskStatus.COMPLETED), one) is None

    # When a map collects its results with forget=True, and a stream its outcomes
    results = await hive.map("echo", [{"n": i} for i in range(6)], timeout=60, forget=True)
    assert [r["payload"] for r in results] == [{"n": i} for i in range(6)]
    streamed = [o async for o in hive.map_stream("echo", [{"n": i} for i in range(4)], timeout=60, forget=True)]
    assert sorted(o.result["payload"]["n"] for o in streamed) == [0, 1, 2, 3]
    # Then no completed task of theirs is kept (the completed index holds only the ones not forgotten)
    assert await kept(hive, *(o.task_id for o in streamed)) == [False] * 4
    completed_ids = {m.decode() for m in await redis.zrange(keys.status_index(TaskStatus.COMPLETED), 0, -1)}
    assert completed_ids == {parent, child}

    # And forgetting the others deletes none of them: failed (a dead letter), cancelled, queued, and a parent
    # its dependent needs (the child itself completed and has no dependents: it goes)
    assert await hive.forget(failed, cancelled, queued, parent) == 0
    assert await kept(hive, failed, cancelled, queued, parent) == [True] * 4
    assert (await hive.status(queued)).status == TaskStatus.SCHEDULED
    assert await hive.forget(child, child, "no-such-task") == 1
    assert await kept(hive, child) == [False]


async def test_a_failed_result_is_kept_when_read_with_forget(hive: Hive, spore_processes: Any) -> None:
    from hive_framework.errors import TaskFailed

    spore_processes("keeps-failures", apps=(BASIC,))
    failed = await hive.submit("always_fail", {}, max_retries=0)
    with pytest.raises(TaskFailed):
        await hive.result(failed, timeout=60, forget=True)
    assert await kept(hive, failed) == [True]


async def test_a_forgotten_task_keeps_its_idempotency_key(hive: Hive, spore_processes: Any) -> None:
    spore_processes("keyed", apps=(BASIC,))
    first = await hive.submit("echo", {"n": 1}, key="invoice-42")
    await hive.result(first, timeout=60, forget=True)
    # the key still stands for the task that ran: nothing new is enqueued, and the record stays gone
    assert await hive.submit("echo", {"n": 1}, key="invoice-42") == first
    assert await hive.status(first) is None


@pytest.mark.parametrize("server", ["redis", "fakeredis"])
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), st.sampled_from([b"{}", b"[]", b'{"status": 1}',
                                                                 b'{"status": "failed"}', b"null"])),
       as_hash=st.booleans())
def test_only_a_completed_record_goes_whatever_bytes_are_planted(
    server: str, hive_config: Any, raw: bytes, as_hash: bool
) -> None:
    async def scenario() -> None:
        # The embedded default runs the same script on fakeredis (its Lua has cjson too).
        broker = MessageBroker(Kernel(hive_config), redis=None if server == "redis" else fakeredis.FakeAsyncRedis())
        await broker.connect()
        redis, keys = broker.redis, broker.keys
        done = TaskMessage(task_id="done", task_type="echo", payload={}, status=TaskStatus.COMPLETED, result=1)
        completed = wire.dumps(done, omit_defaults=True, leave_out=("task_id", "queue", "engine_job_id"))
        try:
            # Given a completed record beside a key holding arbitrary bytes (or a hash) where a record would be
            await redis.set(keys.task("done"), completed)
            if as_hash:
                await redis.hset(keys.task("junk"), "status", raw or b"x")
            else:
                await redis.set(keys.task("junk"), raw)
            # When both are forgotten
            gone = await broker.forget_tasks(["junk", "done"])
            # Then only the completed record went, and the planted key is intact
            assert gone == 1
            assert not await redis.exists(keys.task("done"))
            if as_hash:
                assert await redis.hget(keys.task("junk"), "status") == (raw or b"x")
            else:
                assert await redis.get(keys.task("junk")) == raw
        finally:
            await redis.delete(keys.task("junk"), keys.task("done"))
            await broker.disconnect()

    asyncio.run(scenario())
