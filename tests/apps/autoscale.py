"""Task types for tests/test_autoscale.py (loaded with ``--app tests.apps.autoscale``)."""

from __future__ import annotations

import asyncio
from typing import Any

from hive_framework import TaskContext, task


@task("tick", timeout=30, max_retries=0)
async def tick(payload: dict[str, Any], context: TaskContext) -> int:
    """Count this run in Redis (a task run twice shows 2), then work 50 ms."""
    await context.redis.hincrby(f"{context.config.key_prefix}:test:runs", context.task.task_id, 1)
    await asyncio.sleep(0.05)
    return int(payload["n"])
