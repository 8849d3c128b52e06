"""Broadcasts and mismatched task types on real spore processes: PING reaches every spore, PAUSE/RESUME gate
new work, and a spore asked to run a type it lacks fails that task clearly and keeps serving."""

from __future__ import annotations

import pytest

from hive_framework import Kernel, TaskStatus
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, assert_stays, wait_for_nodes

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def hive_kernel(hive_config):
    """The client knows the test task types, with their declared defaults."""
    return Kernel(hive_config, apps=[BASIC])


async def test_broadcast_reaches_every_spore_and_pause_resume_gate_new_work(hive, spore_processes):
    # Given two running spore processes
    names = ("ctl-a", "ctl-b")
    for name in names:
        spore_processes(name, apps=(BASIC,), concurrency=2)
    await wait_for_nodes(hive, names)

    # When PING is broadcast
    ping = await hive.broadcast("PING")
    # Then every spore answers it
    replies = await hive.broker.collect_replies(ping, expected=2, timeout=10)
    assert sorted((r.node_name, r.command, r.detail) for r in replies) == [
        ("ctl-a", "PING", "pong"),
        ("ctl-b", "PING", "pong"),
    ]

    # When PAUSE is broadcast and acknowledged by both
    pause = await hive.broadcast("PAUSE")
    replies = await hive.broker.collect_replies(pause, expected=2, timeout=10)
    assert sorted((r.node_name, r.detail) for r in replies) == [("ctl-a", "paused"), ("ctl-b", "paused")]
    # (a spore handles broadcasts in order, so by now any second PING reply would have been pushed)
    assert await hive.broker.redis.llen(hive.kernel.keys.reply(ping)) == 0
    # and a task is submitted while they are paused
    task_id = await hive.submit("echo", {"while": "paused"})

    # Then the spores report being paused in their heartbeats
    async def all_paused() -> bool:
        return {(n.node_name, n.paused) for n in await hive.nodes()} == {("ctl-a", True), ("ctl-b", True)}

    await async_wait_until(all_paused, timeout=5, what="both heartbeats to say paused")

    # and no spore takes the task: it stays pending for 1 s, that is 100 poll intervals
    async def still_pending() -> bool:
        message = await hive.status(task_id)
        return message is not None and message.status == TaskStatus.PENDING and message.attempt == 0

    await assert_stays(still_pending, seconds=1.0, what="a task submitted while paused was started")

    # When RESUME is broadcast
    resume = await hive.broadcast("RESUME")
    replies = await hive.broker.collect_replies(resume, expected=2, timeout=10)
    assert sorted(r.detail for r in replies) == ["resumed", "resumed"]
    # Then the waiting task runs to completion
    done = await hive.wait(task_id, timeout=10)
    assert done.status == TaskStatus.COMPLETED
    assert done.result["payload"] == {"while": "paused"}
    assert done.result["node"] in names


async def test_broadcast_to_one_target_reaches_only_that_spore(hive, spore_processes):
    # Given two running spore processes
    for name in ("only-a", "only-b"):
        spore_processes(name, apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["only-a", "only-b"])
    # When PAUSE is sent to one of them
    pause = await hive.broadcast("PAUSE", target_nodes=["only-b"])
    replies = await hive.broker.collect_replies(pause, expected=1, timeout=10)
    # Then that one answers
    assert [(r.node_name, r.detail) for r in replies] == [("only-b", "paused")]
    # and the other does not: once both have answered a later PING (broadcasts are handled in order), no
    # other reply to the PAUSE has come, and the other spore is not paused
    ping = await hive.broadcast("PING")
    assert len(await hive.broker.collect_replies(ping, expected=2, timeout=10)) == 2
    assert await hive.broker.redis.llen(hive.kernel.keys.reply(pause)) == 0
    assert {(n.node_name, n.paused) for n in await hive.nodes()} == {("only-a", False), ("only-b", True)}
    # and a new task is served by the other spore
    done = await hive.wait(await hive.submit("echo", {}), timeout=10)
    assert done.result["node"] == "only-a"


async def test_a_spore_never_takes_a_type_it_lacks_and_the_task_waits_for_one_that_serves_it(
    hive, spore_processes, tmp_path
):
    # Given a spore that loads only the demo tasks, and a client that knows (and accepts) the test types
    narrow = spore_processes("narrow", apps=("hive_framework.demo_tasks",), concurrency=1)
    await wait_for_nodes(hive, ["narrow"])

    # When it is sent a task type it does not have, and then one it knows
    task_id = await hive.submit("echo", {"x": 1})
    text = tmp_path / "words.txt"
    text.write_text("alpha beta gamma\nalpha beta\n")
    counted = await hive.wait(await hive.submit("demo.wordcount", {"path": str(text)}), timeout=15)

    # Then the spore serves the type it knows and leaves the other alone: queued, with the reason it waits
    assert counted.status == TaskStatus.COMPLETED
    assert (counted.result["words"], counted.result["node"]) == (5, "narrow")
    waiting = await hive.status(task_id)
    assert (waiting.status, waiting.attempt) == (TaskStatus.PENDING, 0)
    assert waiting.reason == "no online spore serves `echo`"
    # and when a spore serving it joins, it runs there, once
    spore_processes("wide", apps=(BASIC,), concurrency=1)
    done = await hive.wait(task_id, timeout=30)
    assert (done.status, done.attempt, done.assigned_node, done.reason) == (TaskStatus.COMPLETED, 1, "wide", None)
    assert narrow.proc.poll() is None
