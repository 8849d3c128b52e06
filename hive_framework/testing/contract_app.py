"""Task types the engine contract suite runs (``--app hive_framework.testing.contract_app`` for spore processes)."""

from __future__ import annotations

import asyncio
from typing import Any

from .. import TaskContext, task
from ..redisutil import awaited


def _key(context: TaskContext, *parts: str) -> str:
    return ":".join((context.config.key_prefix, "contract", *parts))


@task("contract.record")
async def record(payload: dict[str, Any], context: TaskContext) -> str:
    """Append the label to a list when the task starts (the order spores start tasks in), then hold its slot."""
    await awaited(context.redis.rpush(_key(context, "order"), payload["label"]))
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return str(payload["label"])


@task("contract.flaky", max_retries=3)
async def flaky(payload: dict[str, Any], context: TaskContext) -> int:
    """Fail ``payload['failures']`` times (counted in Redis), then return how many runs it took."""
    runs = int(await context.redis.incr(_key(context, "runs", context.task.task_id)))
    if runs <= int(payload["failures"]):
        raise RuntimeError(f"planned failure {runs}")
    return runs


@task("contract.sleep", timeout=60)
async def sleep(payload: dict[str, Any], context: TaskContext) -> float:
    """Count the run, then sleep: a long one holds its lease while its spore lives."""
    await context.redis.incr(_key(context, "runs", context.task.task_id))
    await asyncio.sleep(float(payload["seconds"]))
    return float(payload["seconds"])
