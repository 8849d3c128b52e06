"""Life-cycle hook impls and progress-reporting task types for tests/test_lifecycle.py.

Each hook call is appended as one JSON line to the file ``$LIFECYCLE_HOOK_LOG`` names (nothing is logged
when it is unset), so a test reads the exact sequence a real spore process produced.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from hive_framework import HiveConfig, TaskContext, TaskMessage, hookimpl, task

LOG_ENV = "LIFECYCLE_HOOK_LOG"


def _log(hook: str, task: TaskMessage, **extra: Any) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = {"hook": hook, "task_id": task.task_id, "task_type": task.task_type, "attempt": task.attempt,
            "status": task.status.value, **extra}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@hookimpl
def before_enqueue(task: TaskMessage, config: HiveConfig) -> None:
    task.headers["origin"] = "lifecycle-test"
    _log("before_enqueue", task)


@hookimpl
def before_task(task: TaskMessage, node_id: str) -> None:
    _log("before_task", task, node=node_id, headers=task.headers)


@hookimpl
async def after_task(task: TaskMessage, result: Any, node_id: str) -> None:
    await asyncio.sleep(0)  # async impls are awaited
    _log("after_task", task, node=node_id, result=result)


@hookimpl
def on_retry(task: TaskMessage, error: str, exception: BaseException | None, delay: float) -> None:
    _log("on_retry", task, error=error, exception=type(exception).__name__, delay=delay)


@hookimpl
def on_task_failure(task: TaskMessage, error: str, exception: BaseException | None) -> None:
    _log("on_task_failure", task, error=error, exception=None if exception is None else type(exception).__name__)


@task("progress_steps", timeout=60)
async def progress_steps(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Report ``steps`` progress values in a tight loop, hold until the test opens the gate, then say how
    many Redis writes that took and over how long."""
    started = time.monotonic()
    steps = int(payload["steps"])
    for done in range(1, steps + 1):
        context.progress(done, steps, note=f"step {done}")
    gate = f"{context.config.key_prefix}:test:gate:{payload['gate']}"
    deadline = time.monotonic() + 30
    while not await context.redis.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate never opened")
        await asyncio.sleep(0.01)
    await context.progress_writer.flush()
    return {"writes": context.progress_writer.writes, "seconds": time.monotonic() - started}


@task("progress_sync", timeout=60)
def progress_sync(payload: dict[str, Any], context: TaskContext) -> int:
    """A sync handler (run in a thread) reporting progress on every item."""
    items = int(payload["items"])
    for done in range(items + 1):
        context.progress(done, items)
    return items


@task("progress_bad", max_retries=0)
def progress_bad(payload: dict[str, Any], context: TaskContext) -> None:
    """Report ``done`` of ``total``, given as text so NaN can travel in a JSON payload."""
    context.progress(float(payload["done"]), float(payload["total"]))
