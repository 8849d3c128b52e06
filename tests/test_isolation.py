"""Sync handlers in child processes: results and errors come back as JSON, a handler past its timeout is
killed (its process replaced, the spore healthy), and a child that dies is one failed task, not a lost spore."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from hive_framework import HiveConfig, Kernel, TaskStatus, task
from hive_framework.hive import Hive
from hive_framework.isolation import HandlerProcessError, ProcessPool
from hive_framework.testing import async_wait_until

from .apps import isolated

ISOLATED = "tests.apps.isolated"


def test_declaring_a_process_handler_checks_what_a_child_can_run() -> None:
    async def coro(payload: Any) -> None: ...

    def with_context(payload: Any, context: Any) -> None: ...

    def local(payload: Any) -> None: ...

    with pytest.raises(ValueError, match="isolation='process' is for sync handlers"):
        task("a", isolation="process")(coro)
    with pytest.raises(ValueError, match="takes only the payload"):
        task("b", isolation="process")(with_context)
    with pytest.raises(ValueError, match="defined at module level"):
        task("c", isolation="process")(local)
    with pytest.raises(ValueError, match="isolation must be 'thread' or 'process', got 'fiber'"):
        task("d", isolation="fiber")(isolated.whoami.handler)


async def test_a_pool_returns_results_and_errors_and_replaces_a_killed_child() -> None:
    pool = ProcessPool(2, preload=[ISOLATED])
    try:
        first = await pool.call(isolated.whoami.handler, {"n": 1})
        assert first["payload"] == {"n": 1} and first["pid"] != os.getpid()
        assert (await pool.call(isolated.whoami.handler, {}))["pid"] == first["pid"]  # the child is reused
        with pytest.raises(HandlerProcessError, match="ValueError: bad input 7"):
            await pool.call(isolated.boom.handler, {"n": 7})

        # A call cut off by its timeout kills the child running it
        with pytest.raises(TimeoutError):
            async with __import__("asyncio").timeout(0.5):
                await pool.call(isolated.spin.handler, {})
        assert pool.killed == 1
        spinning = [p for p in pool.pids() if p != first["pid"]]
        assert spinning == [], "the spinning child is still alive"
        # and a child that dies is an error naming it, then a fresh child serves the next call
        with pytest.raises(HandlerProcessError, match="died \\(exit code 3\\)"):
            await pool.call(isolated.vanish.handler, {})
        assert (await pool.call(isolated.whoami.handler, {}))["payload"] == {}
        assert len(pool.pids()) <= 2
    finally:
        pool.close()
    assert pool.pids() == []


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[ISOLATED])


@pytest.mark.redis
async def test_a_stuck_sync_handler_is_killed_at_its_timeout_and_the_spore_goes_on(
    hive: Hive, spore_processes: Any
) -> None:
    # Given a spore process with two slots serving handlers that run in child processes
    spore = spore_processes("iso", apps=(ISOLATED,), concurrency=2)

    async def online() -> bool:
        return any(n.node_name == "iso" for n in await hive.nodes())

    await async_wait_until(online, timeout=30, what="the spore")
    # When a handler spins forever past its 1 s timeout
    stuck = await hive.submit("spin", {})
    failed = await hive.wait(stuck, timeout=30)

    # Then its task fails with the timeout, and no process of the spore keeps burning CPU for it
    assert failed.status == TaskStatus.FAILED and "TaskTimeout" in (failed.error or "")

    def spinning() -> list[int]:
        children = psutil.Process(spore.pid).children(recursive=True)
        return [c.pid for c in children if c.cpu_percent(interval=0.2) > 50]

    await async_wait_until(lambda: _none(spinning), timeout=10, what="no child spinning")
    # and the spore goes on: both slots run tasks in processes of their own, errors come back by name
    ran = [await hive.wait(await hive.submit("whoami", {"i": i}), timeout=30) for i in range(3)]
    assert all(m.status == TaskStatus.COMPLETED for m in ran)
    assert {m.result["pid"] for m in ran}.isdisjoint({spore.pid})
    broken = await hive.wait(await hive.submit("boom", {"n": 2}), timeout=30)
    assert (broken.status, broken.error) == (TaskStatus.FAILED, "HandlerProcessError: ValueError: bad input 2")
    assert spore.proc.poll() is None


async def _none(probe: Any) -> bool:
    return not probe()
