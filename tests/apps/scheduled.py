"""A periodic task type for tests/test_schedules.py (loaded by its nexus and spore processes only)."""

from __future__ import annotations

from typing import Any

from hive_framework import TaskContext, task


@task("beat", schedule="every 1s", max_retries=0)
async def beat(payload: dict[str, Any], context: TaskContext) -> int:
    """Record this run under its task id (one entry per run, so a tick run twice shows twice)."""
    return int(await context.redis.rpush(f"{context.config.key_prefix}:test:beats", context.task.task_id))
