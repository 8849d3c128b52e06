"""Task types the integration tests run on spores (loaded with ``--app tests.apps.basic``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from hive_framework import TaskContext, task


@task("echo")
def echo(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Return the payload and who ran it."""
    return {"payload": payload, "node": context.node_name, "pid": os.getpid()}


@task("add", priority="high_priority")
async def add(payload: dict[str, Any]) -> int:
    return int(payload["a"]) + int(payload["b"])


@task("flaky", max_retries=3)
async def flaky(payload: dict[str, Any], context: TaskContext) -> str:
    """Fail ``payload['failures']`` times (counted in Redis), then succeed."""
    key = f"{context.config.key_prefix}:test:flaky:{context.task.task_id}"
    seen = await context.redis.incr(key)
    if seen <= payload["failures"]:
        raise RuntimeError(f"planned failure {seen}")
    return f"ok after {seen - 1} failures"


@task("always_fail", max_retries=2)
def always_fail(payload: dict[str, Any], context: TaskContext) -> None:
    raise ValueError(f"always fails (attempt {context.task.attempt})")


@task("sleep_async", timeout=30)
async def sleep_async(payload: dict[str, Any]) -> float:
    await asyncio.sleep(float(payload["seconds"]))
    return float(payload["seconds"])


@task("block_sync", timeout=30)
def block_sync(payload: dict[str, Any]) -> float:
    time.sleep(float(payload["seconds"]))
    return float(payload["seconds"])


@task("record")
async def record(payload: dict[str, Any], context: TaskContext) -> str:
    """Append this task's label to a Redis list when it starts, then work for a while."""
    await context.redis.rpush(f"{context.config.key_prefix}:test:order", payload["label"])
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return str(payload["label"])
