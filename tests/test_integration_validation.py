"""Bad input is refused with a clear error and leaves Redis untouched; queue stats are the same from every
process of the cluster."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from hive_framework import InvalidTask, Kernel, TaskSpec, TaskStatus, UnknownTaskType
from hive_framework.hive import Hive
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, hive_cli, wait_for_nodes

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """The client knows the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


async def snapshot(hive: Hive) -> dict[str, Any]:
    """Every key of the test namespace with its type and size, and the members of both queues."""
    redis = hive.broker.redis
    keys = sorted([k async for k in redis.scan_iter(match=f"{hive.config.key_prefix}:*", count=1000)])
    sizes = {}
    for key in keys:
        kind = (await redis.type(key)).decode()
        size = {"zset": redis.zcard, "list": redis.llen, "set": redis.scard, "string": redis.strlen,
                "stream": redis.xlen, "hash": redis.hlen}[kind]
        sizes[key.decode()] = (kind, await size(key))
    queues = {q: await hive.broker.engine.queued_jobs(q) for q in hive.broker.engine.queues(["echo"])}
    return {"keys": sizes, "queues": queues}


def big_payload() -> dict[str, str]:
    return {"blob": "x" * (1024 * 1024)}


BAD_INPUT = {
    "payload-not-json": (
        lambda hive, existing: hive.submit("echo", "{not json"),
        InvalidTask,
        "payload is not valid JSON",
    ),
    "payload-json-but-not-object": (
        lambda hive, existing: hive.submit("echo", "[1, 2]"),
        InvalidTask,
        "payload must be a JSON object (a dict), got list",
    ),
    "payload-not-serialisable": (
        lambda hive, existing: hive.submit("echo", {"when": object()}),
        InvalidTask,
        "payload is not JSON-serialisable",
    ),
    "unknown-type": (
        lambda hive, existing: hive.submit("no_such_type", {}),
        UnknownTaskType,
        "unknown task type 'no_such_type'; known task types: ",
    ),
    "payload-over-1-MiB": (
        lambda hive, existing: hive.submit("echo", big_payload()),
        InvalidTask,
        "over the limit of 1048576 (HIVE_MAX_PAYLOAD_BYTES)",
    ),
    "priority-unknown-name": (
        lambda hive, existing: hive.submit("echo", {}, priority="urgent"),
        InvalidTask,
        "bad priority 'urgent'",
    ),
    "priority-above-10": (
        lambda hive, existing: hive.submit("echo", {}, priority=11),
        InvalidTask,
        "levels run from 0 (lowest) to 10 (highest)",
    ),
    "priority-negative": (
        lambda hive, existing: hive.submit("echo", {}, priority=-1),
        InvalidTask,
        "levels run from 0 (lowest) to 10 (highest)",
    ),
    "priority-bool": (
        lambda hive, existing: hive.submit("echo", {}, priority=True),
        InvalidTask,
        "bad priority True",
    ),
    "duplicate-task-id": (
        lambda hive, existing: hive.submit("echo", {"again": True}, task_id=existing),
        InvalidTask,
        "already exists; ids must be new",
    ),
    "batch-with-one-bad-spec": (
        lambda hive, existing: hive.submit_many(
            [TaskSpec(task_type="echo", payload={"i": i}) for i in range(3)]
            + [TaskSpec(task_type="echo", payload={}, priority="urgent")]
        ),
        InvalidTask,
        "bad priority 'urgent'",
    ),
    "batch-naming-one-id-twice": (
        lambda hive, existing: hive.submit_many(
            [TaskSpec(task_type="echo", task_id=f"{existing}-twin") for _ in range(2)]
        ),
        InvalidTask,
        "the batch names the same task_id twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_is_refused_clearly_and_nothing_is_enqueued(hive, case):
    call, error_type, message = BAD_INPUT[case]
    # Given a hive with one task already queued (no spore runs it)
    existing = await hive.submit("echo", {"n": 1}, task_id=f"existing-{uuid.uuid4().hex}")
    before = await snapshot(hive)
    assert len(before["queues"][hive.broker.engine.queue_for(0, None, "echo")]) == 1

    # When bad input is submitted
    # Then it is refused with an error saying what was wrong
    with pytest.raises(error_type, match=re.escape(message)) as refused:
        await call(hive, existing)
    if isinstance(refused.value, UnknownTaskType):
        assert {"echo", "flaky", "record"} <= set(refused.value.known), "the error lists the known types"
    # and nothing was enqueued or changed: same keys, same sizes, same queue members and scores
    assert await snapshot(hive) == before
    kept = await hive.status(existing)
    assert (kept.status, kept.payload) == (TaskStatus.PENDING, {"n": 1})
    await hive.cancel(existing)  # drop its engine job (not in the test namespace)


@pytest.mark.slow
async def test_cli_refuses_bad_input_with_one_line_and_enqueues_nothing(hive, hive_config):
    # Given an empty hive
    before = await snapshot(hive)
    # When a separate CLI process submits bad input
    bad_json = await hive_cli(hive_config, "submit", "echo", "--payload", "{not json")
    unknown = await hive_cli(hive_config, "submit", "no_such_type")
    bad_priority = await hive_cli(hive_config, "submit", "echo", "--priority", "42")
    # Then each fails with a one-line error, no traceback
    assert "--payload" in bad_json.stderr and "not valid JSON" in bad_json.stderr
    assert "unknown task type 'no_such_type'" in unknown.stderr
    assert "bad priority '42'" in bad_priority.stderr
    for result in (bad_json, unknown, bad_priority):
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    # and nothing was enqueued
    assert await snapshot(hive) == before


@pytest.mark.slow
async def test_queue_stats_are_cluster_wide(hive, hive_config, spore_processes):
    # Given tasks submitted by a separate client process: three background, one high-priority
    for args in (
        ("echo", "--payload", '{"n": 1}'),
        ("echo", "--payload", '{"n": 2}'),
        ("always_fail", "--max-retries", "0"),
        ("add", "--payload", '{"a": 1, "b": 2}'),
    ):
        submitted = await hive_cli(hive_config, "submit", *args)
        assert submitted.returncode == 0, submitted.stderr

    # Then this process sees all of them queued and pending
    stats = await hive.queue_stats()
    assert (stats["background_queue"], stats["high_priority_queue"]) == (3, 1)
    assert (stats["tasks_pending"], stats["tasks_running"], stats["tasks_completed"]) == (4, 0, 0)

    # When a spore process runs them
    spore_processes("counter", apps=(BASIC,), concurrency=2)

    # Then this process sees the outcome: three completed, one failed, queues empty
    async def all_final() -> dict[str, int] | None:
        now = await hive.queue_stats()
        finished = now["tasks_completed"] + now["tasks_failed"] == 4
        # (a job leaves its queue a moment after its task's final status is written)
        return now if finished and now["background_queue"] + now["high_priority_queue"] == 0 else None

    stats = await async_wait_until(all_final, timeout=20, what="the four tasks to finish")
    assert (stats["tasks_completed"], stats["tasks_failed"], stats["tasks_pending"]) == (3, 1, 0)
    assert (stats["background_queue"], stats["high_priority_queue"]) == (0, 0)
    # and a third process reads the same counts, and the spore online
    await wait_for_nodes(hive, ["counter"])
    shown = await hive_cli(hive_config, "queues")
    assert shown.returncode == 0, shown.stderr
    seen = json.loads(shown.stdout)
    assert seen == {**stats, "nodes_online": 1}
