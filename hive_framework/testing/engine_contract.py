"""The contract every queueing engine keeps: the same tests for ``streams``, ``arq`` and third-party engines.

Run it against the engine ``HIVE_TEST_BROKER`` names (the hive's test fixtures read it)::

    HIVE_TEST_BROKER=myengine pytest --pyargs hive_framework.testing.engine_contract

or import it into a test module of your own (``from hive_framework.testing.engine_contract import *``).
Each test uses a private key prefix on the test Redis (``HIVE_TEST_REDIS_URL``), in-process spores, and
real spore processes where a spore must die.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from .. import HiveConfig, Kernel, TaskMessage, TaskStatus
from ..hive import Hive
from ..redisutil import awaited, text
from ..spore import Spore
from . import SporeProcess, async_wait_until, contract_other
from . import contract_app as app

__all__ = [
    "hive_kernel",
    "test_a_cancelled_task_that_was_queued_never_runs",
    "test_a_delayed_task_waits_scheduled_then_runs_once_and_a_cancelled_one_never_runs",
    "test_a_failing_attempt_is_retried_until_it_succeeds",
    "test_a_running_task_cancelled_stays_cancelled",
    "test_a_spore_never_takes_a_task_type_it_does_not_serve",
    "test_a_task_of_a_killed_spore_runs_again_on_another_one",
    "test_a_task_past_its_timeout_fails_and_the_spore_keeps_serving",
    "test_every_key_is_under_the_prefix_and_every_value_is_json_or_text",
    "test_jobs_start_in_strict_priority_order_with_pinned_work_first",
    "test_out_of_retries_a_task_fails_for_good_into_the_dead_letters",
    "test_strict_priority_holds_across_the_task_types_a_spore_serves",
]

APP = app.__name__
OTHER = contract_other.__name__
StartSpore = Callable[..., Awaitable[Spore]]

pytestmark = [pytest.mark.redis]


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    """The test namespace's kernel, with the contract's task types."""
    return Kernel(hive_config, apps=[APP])


async def finished(hive: Hive, task_id: str, timeout: float = 30.0) -> TaskMessage:
    message = await hive.broker.wait_for_task(task_id, timeout=timeout)
    assert message.is_terminal
    return message


async def started_order(hive: Hive) -> list[str]:
    return [text(v) for v in await awaited(hive.broker.redis.lrange(f"{hive.config.key_prefix}:contract:order", 0, -1))]


async def runs(hive: Hive, task_id: str) -> int:
    return int(await hive.broker.redis.get(f"{hive.config.key_prefix}:contract:runs:{task_id}") or 0)


async def test_jobs_start_in_strict_priority_order_with_pinned_work_first(hive: Hive, run_spore: StartSpore) -> None:
    # Given tasks queued at mixed levels, and one pinned to the spore that will serve them, before any spore runs
    node = f"contract-{uuid.uuid4().hex[:6]}"
    levels = {"bg0": 0, "bg3": 3, "hi5": 5, "hi10": 10, "bg1": 1, "hi7": 7}
    ids = [await hive.submit("contract.record", {"label": label}, priority=level) for label, level in levels.items()]
    ids.append(await hive.broker.enqueue_task("contract.record", {"label": "pinned"}, priority=0, node=node))
    # When one spore with one slot drains them
    await run_spore(name=node, concurrency=1)
    for task_id in ids:
        assert (await finished(hive, task_id)).status == TaskStatus.COMPLETED
    # Then its own queue came first, then each level from the highest down
    assert await started_order(hive) == ["pinned", "hi10", "hi7", "hi5", "bg3", "bg1", "bg0"]


async def test_a_spore_never_takes_a_task_type_it_does_not_serve(
    hive: Hive, run_spore: StartSpore, hive_config: HiveConfig
) -> None:
    # Given tasks of two types at mixed levels queued before any spore runs; this client has only one type's code
    # and no spore has advertised the other yet, so that one is queued by name with allow_unknown
    records = [await hive.submit("contract.record", {"label": f"r{i}"}, priority=i % 11) for i in range(12)]
    others = [
        await hive.submit("contract.other", {"label": f"o{i}"}, priority=10 - i % 11, allow_unknown=True)
        for i in range(12)
    ]
    waiting = await hive.status(others[0])
    assert waiting is not None and waiting.reason == "no online spore serves `contract.other`"
    # When a spore serving only contract.record (and not contract.other) drains what it can
    await run_spore(name="contract-records", concurrency=2)
    for task_id in records:
        assert (await finished(hive, task_id)).status == TaskStatus.COMPLETED
    # Then it took no task of the other type, not even the higher-priority ones: they wait, never attempted
    for message in await hive.broker.get_tasks(others):
        assert message is not None and (message.status, message.attempt) == (TaskStatus.PENDING, 0)
    # When a spore serving only contract.other joins, Then it runs them all, and each type ran where it is served
    await run_spore(Kernel(hive_config, apps=[OTHER]), name="contract-others", concurrency=2)
    done = [await finished(hive, task_id) for task_id in others]
    assert {(m.status, m.assigned_node, m.attempt) for m in done} == {(TaskStatus.COMPLETED, "contract-others", 1)}
    ran_records = await hive.broker.get_tasks(records)
    assert {m.assigned_node for m in ran_records if m is not None} == {"contract-records"}


async def test_strict_priority_holds_across_the_task_types_a_spore_serves(
    hive: Hive, run_spore: StartSpore, hive_config: HiveConfig
) -> None:
    # Given tasks of two types interleaved over every level, queued before any spore runs
    labels = {}
    for level in range(11):
        labels[await hive.submit("contract.record", {"label": f"r{level}"}, priority=level)] = level
        labels[await hive.submit("contract.other", {"label": f"o{level}"}, priority=level, allow_unknown=True)] = level
    # When one spore serving both types drains them with one slot
    await run_spore(Kernel(hive_config, apps=[APP, OTHER]), name="contract-both", concurrency=1)
    for task_id in labels:
        assert (await finished(hive, task_id)).status == TaskStatus.COMPLETED
    # Then every task started after every task of a higher level, whatever its type
    order = await started_order(hive)
    levels = [int(label[1:]) for label in order]
    assert sorted(order) == sorted(f"{t}{level}" for t in "ro" for level in range(11))
    assert levels == sorted(levels, reverse=True)


async def test_a_failing_attempt_is_retried_until_it_succeeds(hive: Hive, run_spore: StartSpore) -> None:
    # Given a task that fails on its first two runs
    await run_spore(name="contract-retry", concurrency=2)
    task_id = await hive.submit("contract.flaky", {"failures": 2}, max_retries=3)
    # Then it completes on its third attempt, having run exactly three times
    message = await finished(hive, task_id)
    assert (message.status, message.attempt, message.result) == (TaskStatus.COMPLETED, 3, 3)
    assert await runs(hive, task_id) == 3


async def test_out_of_retries_a_task_fails_for_good_into_the_dead_letters(hive: Hive, run_spore: StartSpore) -> None:
    # Given a task that always fails, with one retry allowed
    await run_spore(name="contract-dead", concurrency=2)
    task_id = await hive.submit("contract.flaky", {"failures": 99}, max_retries=1)
    # Then it fails after two attempts with the last error, and is listed as a dead letter
    message = await finished(hive, task_id)
    assert (message.status, message.attempt) == (TaskStatus.FAILED, 2)
    assert message.error == "RuntimeError: planned failure 2"
    assert task_id in [m.task_id for m in await hive.broker.dead_letters()]
    assert await runs(hive, task_id) == 2


async def test_a_task_past_its_timeout_fails_and_the_spore_keeps_serving(hive: Hive, run_spore: StartSpore) -> None:
    # Given a task that sleeps far past its timeout, and no retries
    await run_spore(name="contract-timeout", concurrency=1)
    slow = await hive.submit("contract.sleep", {"seconds": 30}, timeout=0.3, max_retries=0)
    # Then it fails as a timeout, and the same single slot then runs the next task
    message = await finished(hive, slow)
    assert message.status == TaskStatus.FAILED
    assert message.error is not None and message.error.startswith("TaskTimeout: task ran past its timeout")
    after = await finished(hive, await hive.submit("contract.record", {"label": "after"}))
    assert after.status == TaskStatus.COMPLETED


async def test_a_cancelled_task_that_was_queued_never_runs(hive: Hive, run_spore: StartSpore) -> None:
    # Given a queued task cancelled before any spore runs
    doomed = await hive.submit("contract.record", {"label": "doomed"})
    assert await hive.broker.cancel_task(doomed)
    # When a spore starts and runs a later task
    await run_spore(name="contract-cancel", concurrency=1)
    assert (await finished(hive, await hive.submit("contract.record", {"label": "later"}))).status == "completed"
    # Then the cancelled one never started and stays cancelled
    assert await started_order(hive) == ["later"]
    assert (await hive.broker.get_task_status(doomed)).status == TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_delayed_task_waits_scheduled_then_runs_once_and_a_cancelled_one_never_runs(
    hive: Hive, run_spore: StartSpore
) -> None:
    # Given a spore, tasks due in a second (one cancelled before that) and one due a moment after them
    await run_spore(name="contract-delay", concurrency=2)
    eta = datetime.now(UTC) + timedelta(seconds=1)
    ids = [await hive.submit("contract.record", {"label": f"d{i}"}, priority=i * 5, eta=eta) for i in range(3)]
    doomed = await hive.submit("contract.record", {"label": "doomed"}, eta=eta)
    assert await hive.broker.cancel_task(doomed)
    last = await hive.submit("contract.record", {"label": "last"}, delay=1.5)
    # Then they are stored at once, scheduled with their due time, and counted as such
    for message in await hive.broker.get_tasks(ids):
        assert message is not None and (message.status, message.eta) == (TaskStatus.SCHEDULED, eta)
    assert (await hive.broker.get_queue_stats())["tasks_scheduled"] == 4
    # When their time has come, Then each ran exactly once, not before it, and the cancelled one never
    for task_id in [*ids, last]:
        message = await finished(hive, task_id)
        assert message.status == TaskStatus.COMPLETED and message.started_at is not None
        assert message.eta is not None and message.started_at >= message.eta
    assert sorted(await started_order(hive)) == ["d0", "d1", "d2", "last"], "each started once, doomed never"


async def test_a_running_task_cancelled_stays_cancelled(hive: Hive, run_spore: StartSpore) -> None:
    # Given a task running on a spore
    spore = await run_spore(name="contract-cancel-running", concurrency=1)
    task_id = await hive.submit("contract.sleep", {"seconds": 0.5})
    await async_wait_until(lambda: runs(hive, task_id), what="the task to start")
    # When it is cancelled while it runs, and its attempt then ends
    assert await hive.broker.cancel_task(task_id)
    await async_wait_until(lambda: _idle(spore), what="the spore to finish the attempt")
    # Then the cancellation stands: the attempt's outcome was dropped and nothing retries it
    message = await hive.broker.get_task_status(task_id)
    assert message is not None and (message.status, message.result) == (TaskStatus.CANCELLED, None)
    assert await runs(hive, task_id) == 1


async def _idle(spore: Spore) -> bool:
    return spore.worker is not None and spore.worker.running == 0


@pytest.mark.slow
async def test_a_task_of_a_killed_spore_runs_again_on_another_one(
    hive: Hive, spore_processes: Callable[..., SporeProcess]
) -> None:
    # Given a spore process running a long task
    first = spore_processes("contract-victim", apps=(APP,), concurrency=1)
    task_id = await hive.submit("contract.sleep", {"seconds": 1.5})
    await async_wait_until(lambda: runs(hive, task_id), timeout=30, what="the task to start on the first spore")
    # When that spore is killed with SIGKILL (no hand-back) and another one starts
    first.kill()
    spore_processes("contract-heir", apps=(APP,), concurrency=1)
    # Then the task runs again once the dead spore's lease lapses, and completes there: at least once, never lost
    message = await finished(hive, task_id, timeout=60)
    assert (message.status, message.assigned_node, message.attempt) == (TaskStatus.COMPLETED, "contract-heir", 2)
    assert await runs(hive, task_id) == 2


async def test_every_key_is_under_the_prefix_and_every_value_is_json_or_text(
    hive: Hive, run_spore: StartSpore
) -> None:
    # Given work that touches every path of an engine: queueing, running, a retry, a cancel, a pinned task
    marker = uuid.uuid4().hex
    node = f"contract-keys-{marker}"
    await run_spore(name=node, concurrency=2)
    done = [
        await hive.broker.enqueue_task("contract.record", {"label": "a"}, task_id=f"{marker}-a"),
        await hive.broker.enqueue_task("contract.flaky", {"failures": 1}, task_id=f"{marker}-b"),
        await hive.broker.enqueue_task("contract.record", {"label": "c"}, task_id=f"{marker}-c", node=node),
    ]
    for task_id in done:
        await finished(hive, task_id)
    cancelled = await hive.broker.enqueue_task("contract.sleep", {"seconds": 5}, task_id=f"{marker}-d")
    await hive.broker.cancel_task(cancelled)
    # And, at the moment of looking, one task queued for a node that never comes, one running and one delayed
    held = await hive.broker.enqueue_task("contract.record", {"label": "held"}, task_id=f"{marker}-e",
                                          node=f"absent-{marker}")
    running = await hive.broker.enqueue_task("contract.sleep", {"seconds": 4}, task_id=f"{marker}-f")
    later = await hive.broker.enqueue_task("contract.record", {"label": "later"}, task_id=f"{marker}-g", delay="1h")
    await async_wait_until(lambda: runs(hive, running), what="the long task to start")
    # Then every key anywhere in Redis that names these tasks or this node lies under the hive's prefix
    redis = hive.broker.redis
    stray = [text(k) async for k in redis.scan_iter(match=f"*{marker}*", count=1000)]
    assert stray, "the work left no key at all: the scan is not looking where the engine writes"
    assert [k for k in stray if not k.startswith(hive.config.key_prefix + ":")] == []
    # And no value under the prefix is anything but JSON or plain text (no pickle)
    keys = [text(k) async for k in redis.scan_iter(match=f"{hive.config.key_prefix}:*", count=1000)]
    for key in keys:
        for value in await _values(redis, key):
            assert not value.startswith(b"\x80"), f"{key} holds a pickle"
            decoded = value.decode("utf-8")  # raises on binary data
            if decoded[:1] in ("{", "["):
                json.loads(decoded)
    for task_id in (held, running, later):
        await hive.broker.cancel_task(task_id)


async def _values(redis: aioredis.Redis, key: str) -> Iterable[bytes]:
    kind = text(await redis.type(key))
    values: list[Any]
    if kind == "string":
        values = [await redis.get(key)]
    elif kind == "list":
        values = await awaited(redis.lrange(key, 0, -1))
    elif kind == "hash":
        values = list((await awaited(redis.hgetall(key))).values())
    elif kind == "set":
        values = list(await awaited(redis.smembers(key)))
    elif kind == "zset":
        values = await redis.zrange(key, 0, -1)
    elif kind == "stream":
        values = [v for _, fields in await redis.xrange(key) for v in fields.values()]
    else:
        values = []
    return [v if isinstance(v, bytes) else str(v).encode() for v in values if v is not None]
