"""Fencing: an attempt whose lease lapsed and which ran again elsewhere never saves over the newer attempt.

Runs against the engine ``HIVE_TEST_BROKER`` names (both in CI); the two attempts are driven through the
engine-neutral :class:`AttemptRunner`, as a spore's worker drives them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
import pytest
from redis.exceptions import WatchError

from hive_framework import Hive, Kernel, TaskMessage, TaskSpec, TaskStatus
from hive_framework.broker import AttemptRunner, Delivery, Fence
from hive_framework.broker.engine import Prefetched
from hive_framework.engines.streams.engine import CARRY_BELOW
from hive_framework.testing import fast_config

from .integration_helpers import BASIC, count_outcomes
from .private_redis import PrivateRedis

pytestmark = [pytest.mark.redis]


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


def _runner(hive: Any, node: str, result: str) -> AttemptRunner:
    async def execute(message: TaskMessage) -> str:
        return result

    return AttemptRunner(hive.broker, node_id=node, node_name=node, concurrency=1, execute=execute)


async def _delivery(hive: Any, task_id: str) -> Delivery:
    message = await hive.status(task_id)
    # A receipt that settles nothing real (streams: an entry id no stream holds; arq: unused).
    return Delivery(task_id=task_id, job_id=message.engine_job_id, receipt=(message.queue, "0-1"))


async def test_a_lapsed_attempt_does_not_overwrite_the_newer_one(hive):
    # Given a task begun on spore a, whose lease then lapsed, so spore b began it again (attempt 2)
    task_id = await hive.submit("echo", {"x": 1})
    delivery = await _delivery(hive, task_id)
    (old,) = await _runner(hive, "a", "from a").begin([delivery])
    (new,) = await _runner(hive, "b", "from b").begin([delivery])
    assert (old.message.attempt, new.message.attempt) == (1, 2)

    # When the old attempt finishes while the new one still runs
    assert await _runner(hive, "a", "from a").run(old) is None

    # Then its outcome is dropped: the record still shows attempt 2 running on b
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.assigned_node, stored.result) == (TaskStatus.RUNNING, 2, "b", None)

    # and when the new attempt finishes, its outcome is the one kept
    await _runner(hive, "b", "from b").run(new)
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.assigned_node, stored.result) == (
        TaskStatus.COMPLETED, 2, "b", "from b"
    )

    # and an old attempt arriving even later does not reopen or overwrite the finished task
    await _runner(hive, "a", "from a").run(old)
    assert (await hive.status(task_id)).result == "from b"


async def test_a_requeued_zombie_attempt_does_not_overwrite_the_requeued_task(hive):
    # Given a task begun on spore a, then re-queued by the watchdog as a zombie (a fresh engine job)
    task_id = await hive.submit("echo", {"x": 1})
    (old,) = await _runner(hive, "a", "from a").begin([await _delivery(hive, task_id)])
    assert await hive.broker.requeue_zombie(old.message, "node a stopped beating") == "pending"

    # When spore a comes back and reports its attempt
    await _runner(hive, "a", "from a").run(old)

    # Then the re-queued task is untouched: pending under its new job, no result
    stored = await hive.status(task_id)
    assert stored.status == TaskStatus.PENDING
    assert stored.engine_job_id != old.message.engine_job_id
    assert stored.result is None
    await hive.cancel(task_id)


async def test_an_attempt_begun_from_a_stale_read_does_not_reopen_a_finished_task(hive, monkeypatch):
    # Given a task begun on spore a, and spore b reading it then (its lease lapsing in a partition)
    task_id = await hive.submit("echo", {"x": 1})
    await count_outcomes(hive, [task_id])
    delivery = await _delivery(hive, task_id)
    (first,) = await _runner(hive, "a", "from a").begin([delivery])
    stale = await hive.broker.get_tasks([task_id])

    # When a's outcome lands before b's begin is written (the partition healed in between)
    await _runner(hive, "a", "from a").run(first)

    async def read_before_the_outcome(task_ids: Any) -> Any:
        return stale

    monkeypatch.setattr(hive.broker, "get_tasks", read_before_the_outcome)
    begun = await _runner(hive, "b", "from b").begin([delivery])
    monkeypatch.undo()

    # Then b begins nothing: the task stays completed by a, with one recorded outcome
    assert begun == []
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.assigned_node, stored.result) == (
        TaskStatus.COMPLETED, 1, "a", "from a"
    )
    assert await hive.broker.redis.llen(hive.broker.keys.done(task_id)) == 1


async def test_an_attempt_begins_from_the_copy_its_job_carries_without_reading_the_record(hive, monkeypatch):
    # Given a job that carries a copy of its task's record, which is still current
    task_id = await hive.submit("echo", {"x": 1})
    copy = await hive.broker.redis.get(hive.broker.keys.task(task_id))
    delivery = attrs.evolve(await _delivery(hive, task_id), record=Prefetched(copy, copy=True))

    # When a spore begins it, with the records unreadable (a read would be a round trip more)
    async def no_reads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the record was read")

    monkeypatch.setattr(hive.broker, "get_tasks", no_reads)
    (attempt,) = await _runner(hive, "a", "from a").begin([delivery])
    monkeypatch.undo()

    # Then the attempt is saved from the copy: running on a, attempt 1
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.assigned_node) == (TaskStatus.RUNNING, 1, "a")
    assert attempt.message.payload == {"x": 1}


@pytest.mark.parametrize("copy", ["stale", "garbage"])
async def test_an_attempt_whose_copy_of_the_record_is_stale_or_garbage_begins_from_the_record(hive, copy):
    # Given a job carrying a copy of its record, and the record changed since in a way the status, attempt, job
    # and node do not show (its payload), or a copy that is not a record at all
    task_id = await hive.submit("echo", {"x": 1})
    key = hive.broker.keys.task(task_id)
    carried = await hive.broker.redis.get(key)
    record = json.loads(carried)
    record["payload"] = {"x": 2}
    await hive.broker.redis.set(key, json.dumps(record))
    if copy == "garbage":
        carried = b"{not json"
    delivery = attrs.evolve(await _delivery(hive, task_id), record=Prefetched(carried, copy=True))

    # When a spore begins it
    (attempt,) = await _runner(hive, "a", "from a").begin([delivery])

    # Then it runs what the record says now, counted once; nothing is quarantined
    assert attempt.message.payload == {"x": 2}
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.payload) == (TaskStatus.RUNNING, 1, {"x": 2})
    assert await hive.broker.redis.hlen(hive.broker.keys.dead_records) == 0


async def test_stream_entries_carry_their_record_only_while_the_stream_is_short(hive):
    if hive.broker.engine.name != "streams":
        pytest.skip("the streams engine's entries carry records; ARQ's jobs do not")
    # Given no spore, when more tasks are queued than a short stream holds
    ids = await hive.submit_many([TaskSpec(task_type="echo", payload={"x": i}) for i in range(CARRY_BELOW + 6)])

    # Then the first entries carry an exact copy of their record, and those queued behind a backlog none
    stream = (await hive.status(ids[0])).queue
    entries = await hive.broker.redis.xrange(stream)
    assert [e[b"t"].decode() for _, e in entries] == ids
    copies = [e.get(b"r") for _, e in entries]
    assert copies[CARRY_BELOW:] == [None] * 6
    assert copies[:CARRY_BELOW] == await hive.broker.redis.mget([hive.broker.keys.task(t) for t in ids[:CARRY_BELOW]])


def test_an_exact_fence_holds_for_those_bytes_only():
    message = TaskMessage(task_id="t", task_type="echo", payload={"x": 1})
    raw = b'{"task_id": "t"}'
    fence = Fence.copy_of(message, raw.decode())
    assert fence.holds(raw) and fence.holds(raw.decode())
    assert not fence.holds(raw + b" ") and not fence.holds(None) and not fence.holds(b"\xff")
    assert fence.argv() == ["=", raw, "", ""]


async def test_a_connection_lost_while_watching_starts_the_save_over(hive, monkeypatch):
    # Given the arq engine, whose saves are WATCHed transactions, and an attempt that began
    if hive.broker.config.broker != "arq":
        pytest.skip("the streams engine saves in one Lua call, with nothing watched")
    task_id = await hive.submit("echo", {"x": 1})
    (attempt,) = await _runner(hive, "a", "from a").begin([await _delivery(hive, task_id)])
    engine = hive.broker.engine
    real = engine.redis.pipeline
    failed: list[str] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        if not failed:  # the first transaction's connection dies while it watches (a pooled one left stale)
            async def exists(*names: Any) -> Any:
                failed.append("exists")
                raise WatchError("A ConnectionError occurred on while watching one or more keys")
            pipe.exists = exists
        return pipe

    monkeypatch.setattr(engine.redis, "pipeline", pipeline)
    # When the attempt's outcome is saved
    await _runner(hive, "a", "from a").run(attempt)
    monkeypatch.undo()
    # Then the transaction started over and the outcome was saved, not reported as an outage
    assert failed == ["exists"]
    stored = await hive.status(task_id)
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "from a")


async def test_a_fenced_save_is_logged_once_when_its_transaction_starts_over(hive, monkeypatch, caplog):
    # Given the arq engine, a save whose fence no longer holds (the record shows another attempt) batched with
    # one that saves, and a watched key touched between the check and EXEC on the first pass
    if hive.broker.config.broker != "arq":
        pytest.skip("the streams engine saves in one Lua call, with nothing watched")
    stale_id = await hive.submit("echo", {"x": 1})
    other_id = await hive.submit("echo", {"x": 2})
    stale, other = await hive.status(stale_id), await hive.status(other_id)
    engine = hive.broker.engine
    real = engine.redis.pipeline
    touched: list[str] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        if not touched:
            execute = pipe.execute

            async def touch_then_execute(*a: Any, **kw: Any) -> Any:
                # A write of the same bytes still invalidates the WATCH: EXEC refuses, the save starts over.
                key = hive.broker.keys.task(stale_id)
                await hive.broker.redis.set(key, await hive.broker.redis.get(key))
                touched.append(key)
                return await execute(*a, **kw)

            pipe.execute = touch_then_execute
        return pipe

    monkeypatch.setattr(engine.redis, "pipeline", pipeline)
    lapsed = Fence.running(7, stale.engine_job_id or "", "gone-node")
    # When both are recorded
    with caplog.at_level(logging.WARNING, logger="hive_framework.broker.engine"):
        outcomes = await engine.record([(stale, "unknown", lapsed), (other, "unknown", None)])
    monkeypatch.undo()

    # Then the transaction started over, the fenced save was refused and the other saved
    assert len(touched) == 1
    assert outcomes[0] is None and outcomes[1] == []
    # and the fenced outcome was logged once, not once per pass
    warnings = [r for r in caplog.records if stale_id in r.getMessage() and "is not applied" in r.getMessage()]
    assert len(warnings) == 1
    await hive.cancel(stale_id)
    await hive.cancel(other_id)


async def test_a_save_that_landed_before_its_reply_was_lost_is_not_fenced_when_sent_again(hive, monkeypatch):
    # Given an engine whose every save lands but whose reply is lost once, so the save is sent again (what a
    # connection reset after the write does: redis-py or the spore sends it once more)
    engine = hive.broker.engine
    real = engine.record
    resent: list[Any] = []

    async def reply_lost_once(items: Any) -> Any:
        await real(items)
        resent.append(await real(items))
        return resent[-1]

    monkeypatch.setattr(engine, "record", reply_lost_once)
    task_id = await hive.submit("echo", {"x": 1})
    await count_outcomes(hive, [task_id])
    # When an attempt begins and completes that way
    begun = await _runner(hive, "a", "from a").begin([await _delivery(hive, task_id)])
    # Then the begin stands (it is the spore's own write, not a newer attempt's): the attempt runs
    assert [a.message.attempt for a in begun] == [1]
    assert (await hive.status(task_id)).status == TaskStatus.RUNNING
    await _runner(hive, "a", "from a").run(begun[0])
    # and its outcome is recorded once
    stored = await hive.status(task_id)
    assert (stored.status, stored.attempt, stored.assigned_node, stored.result) == (
        TaskStatus.COMPLETED, 1, "a", "from a"
    )
    assert await hive.broker.redis.llen(hive.broker.keys.done(task_id)) == 1
    # and neither save sent again was taken for a newer attempt's (the final record keeps no engine job)
    assert len(resent) == 2 and all(outcome is not None for [outcome] in resent)


async def test_a_save_after_redis_lost_its_scripts_loads_the_runner_and_lands(tmp_path):
    # Given a hive on a private Redis (its script cache is flushed here, which no shared server may see)
    server = PrivateRedis(tmp_path / "redis", appendonly=False)
    server.start()
    hive = Hive(Kernel(fast_config(server.url), apps=[BASIC]))
    try:
        await hive.open()
        task_id = await hive.submit("echo", {"x": 1})
        (attempt,) = await _runner(hive, "a", "from a").begin([await _delivery(hive, task_id)])

        # When Redis loses its scripts (a restart, a failover) before the attempt's outcome is saved
        await hive.broker.redis.script_flush()
        await _runner(hive, "a", "from a").run(attempt)

        # Then the save loads what it needs and lands, once
        stored = await hive.status(task_id)
        assert (stored.status, stored.attempt, stored.result) == (TaskStatus.COMPLETED, 1, "from a")
    finally:
        await hive.close()
        server.stop()
