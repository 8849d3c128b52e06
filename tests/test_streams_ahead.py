"""The streams engine's worker claims a batch ahead while its tasks are quick, and gives that batch back when it
stops: entries held ahead never wait out a lease."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from hive_framework import Kernel, TaskMessage, TaskSpec, TaskStatus
from hive_framework.broker import AttemptRunner
from hive_framework.engines.streams.worker import GROUP, _handle
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC

pytestmark = [pytest.mark.redis]


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


async def test_entries_claimed_ahead_go_back_to_the_stream_when_the_worker_stops(hive):
    if hive.broker.engine.name != "streams":
        pytest.skip("claiming ahead is the streams engine's")
    gate = asyncio.Event()

    async def execute(message: TaskMessage) -> Any:
        if message.payload.get("block"):
            await gate.wait()
        return "ok"

    runner = AttemptRunner(hive.broker, node_id="ahead", node_name="ahead", concurrency=2, task_types=["echo"],
                           execute=execute)
    worker = hive.broker.engine.create_worker(runner)
    main = asyncio.create_task(worker.main())
    try:
        # Given a 2-slot worker whose tasks have been quick
        quick = await hive.submit_many([TaskSpec(task_type="echo", payload={"i": i}) for i in range(4)])
        for task_id in quick:
            assert (await hive.wait(task_id, timeout=20)).status == TaskStatus.COMPLETED

        # When two tasks that block fill its slots and two quick ones queue behind them
        blocking = await hive.submit_many([TaskSpec(task_type="echo", payload={"block": True}) for _ in range(2)])
        behind = await hive.submit_many([TaskSpec(task_type="echo", payload={"i": i}) for i in range(2)])

        # Then the quick ones are claimed ahead and held, not run
        async def holds_all_four() -> bool:
            running = [(await hive.status(t)).status for t in blocking]
            return running == [TaskStatus.RUNNING] * 2 and len(worker._ahead) == 2

        await async_wait_until(holds_all_four, timeout=20, what="two running and two held ahead")
        assert sorted(d.task_id for d in worker._ahead) == sorted(behind)
        assert [(await hive.status(t)).status for t in behind] == [TaskStatus.PENDING] * 2

        # and when the worker stops, they go back to the stream: another reader gets them at once
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        stream = (await hive.status(behind[0])).queue
        reply = await hive.broker.redis.xreadgroup(GROUP, "another", {stream: ">"}, count=10)
        assert sorted(e[b"t"].decode() for _, entries in reply for _, e in entries) == sorted(behind)
    finally:
        gate.set()
        main.cancel()
        for task in worker.in_flight():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(main, *worker.in_flight(), return_exceptions=True)


async def test_entries_held_ahead_are_let_go_when_their_begin_fails(hive):
    if hive.broker.engine.name != "streams":
        pytest.skip("claiming ahead is the streams engine's")

    class LostRedis(AttemptRunner):
        async def begin(self, deliveries: Any) -> Any:
            raise ConnectionError("Redis went away")

    async def execute(message: TaskMessage) -> Any:
        return "ok"

    worker = hive.broker.engine.create_worker(
        LostRedis(hive.broker, node_id="lost", node_name="lost", concurrency=2, task_types=["echo"], execute=execute)
    )
    # Given two entries claimed ahead, their leases renewed while they wait for a slot
    await hive.submit_many([TaskSpec(task_type="echo", payload={"i": i}) for i in range(2)])
    await worker._ensure_groups()
    held = await worker._claim(2)
    assert len(held) == 2
    worker._held.update({_handle(*d.receipt): d.receipt for d in held})

    # When beginning them fails (Redis went away)
    with pytest.raises(ConnectionError):
        await worker._start(held)

    # Then the worker no longer renews their leases, so once they lapse a spore takes them over
    assert worker._held == {}
