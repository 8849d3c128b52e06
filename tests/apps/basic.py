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


@task("gated", timeout=60)
async def gated(payload: dict[str, Any], context: TaskContext) -> str:
    """Append this task's label to the order list when it starts, then hold its slot until the test opens
    ``payload['gate']`` (sets ``{prefix}:test:gate:{gate}``); gives up after ``payload['max_wait']`` s."""
    prefix = context.config.key_prefix
    await context.redis.rpush(f"{prefix}:test:order", payload["label"])
    gate = f"{prefix}:test:gate:{payload['gate']}"
    deadline = time.monotonic() + float(payload.get("max_wait", 30))
    while not await context.redis.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {payload['gate']} never opened")
        await asyncio.sleep(0.01)
    return str(payload["label"])


@task("overlap", timeout=30)
async def overlap(payload: dict[str, Any], context: TaskContext) -> int:
    """Count the ``overlap`` handlers running at once (a counter in Redis), hold ``payload['seconds']``; return the
    count this one saw when it started."""
    key = f"{context.config.key_prefix}:test:overlap"
    seen = await context.redis.incr(key)
    try:
        await asyncio.sleep(float(payload.get("seconds", 0.01)))
    finally:
        await context.redis.decr(key)
    return int(seen)


@task("nap", max_retries=2)
async def nap(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Sleep ``payload['seconds']`` (on the first start only, with ``payload['first_only']``); say who ran it.

    Starts are counted in Redis, so a run handed back or re-run after a crash is seen as a second start.
    """
    starts = await context.redis.incr(f"{context.config.key_prefix}:test:starts:{context.task.task_id}")
    if starts == 1 or not payload.get("first_only"):
        await asyncio.sleep(float(payload["seconds"]))
    return {"node": context.node_name, "pid": os.getpid(), "attempt": context.task.attempt, "starts": starts}


# --- map-reduce and dependency tests (tests/test_mapreduce*.py) -------------------------------------------


@task("mr_item", timeout=30, max_retries=0)
async def mr_item(payload: dict[str, Any], context: TaskContext) -> Any:
    """One map-reduce item: wait ``seconds`` (or until gate ``gate`` opens), fail if ``fail``, return ``value``.

    Each finished item appends its value to ``{prefix}:test:mr_done``, so tests see the finishing order.
    """
    prefix = context.config.key_prefix
    if "gate" in payload:
        gate = f"{prefix}:test:gate:{payload['gate']}"
        deadline = time.monotonic() + float(payload.get("max_wait", 30))
        while not await context.redis.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate {payload['gate']} never opened")
            await asyncio.sleep(0.01)
    await asyncio.sleep(float(payload.get("seconds", 0)))
    if payload.get("fail"):
        raise ValueError(f"item {payload.get('value')!r} fails on purpose")
    await context.redis.rpush(f"{prefix}:test:mr_done", str(payload.get("value")))
    return payload.get("value")


@task("mr_length", reducer="sum")
def mr_length(payload: dict[str, Any]) -> int:
    """The length of ``payload['item']`` as text; the task type's default reducer adds them up."""
    return len(str(payload["item"]))


@task("dag_step", timeout=30, max_retries=0)
async def dag_step(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """A DAG node: record ``start:<label>``/``end:<label>`` in ``{prefix}:test:dag``, read dependency results."""
    key = f"{context.config.key_prefix}:test:dag"
    await context.redis.rpush(key, f"start:{payload['label']}")
    deps = await context.dependency_results()
    await asyncio.sleep(float(payload.get("seconds", 0)))
    if payload.get("fail"):
        raise RuntimeError(f"step {payload['label']} fails on purpose")
    await context.redis.rpush(key, f"end:{payload['label']}")
    return {"label": payload["label"], "deps": deps}
