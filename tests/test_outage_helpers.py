"""The small helpers of hive_framework.outage that stopping loops and clean-ups lean on."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from hive_framework.outage import try_twice
from hive_framework.redisutil import raise_if_cancelling


async def test_a_swallowed_cancel_still_stops_a_loop() -> None:
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            raise_if_cancelling()
            turns += 1
            # what redis-py does with a cancel landing in its connection check
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert task.cancelled() and turns >= 1


async def test_try_twice_runs_again_after_a_failure_and_logs_only_the_second(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("reset")

    await try_twice(flaky, "leave", logging.getLogger("t"))
    assert len(calls) == 2 and "could not" not in caplog.text

    async def broken() -> None:
        calls.append(1)
        raise ConnectionError("gone")

    calls.clear()
    with caplog.at_level(logging.WARNING):
        await try_twice(broken, "leave the cluster view", logging.getLogger("t"))
    assert len(calls) == 2 and "could not leave the cluster view: ConnectionError('gone')" in caplog.text
