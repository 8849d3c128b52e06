"""Task types of a heterogeneous hive (``--app tests.apps.skills``): a spore loading this module serves only
the types ``TEST_SKILLS_SERVED`` names (comma separated; all of them when unset), so spores of one test differ
in what they can do."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hive_framework import TaskContext, task

#: Every type this module can declare, with its declared options (what its spores advertise).
SKILLS: dict[str, dict[str, Any]] = {
    "resize": {"priority": "high_priority", "timeout": 7, "max_retries": 1},
    "scan": {"timeout": 11},
    "scrape": {},
    "transcode": {},
}


async def _note(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Record the start order on this spore (a list per node: "priority:task id") and say who ran what."""
    key = f"{context.config.key_prefix}:test:started:{context.node_name}"
    await context.redis.rpush(key, f"{context.task.priority}:{context.task.task_id}")  # type: ignore[misc]
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return {"node": context.node_name, "type": context.task.task_type, "priority": context.task.priority,
            "timeout": context.task.timeout, "max_retries": context.task.max_retries}


_wanted = [n for n in os.environ.get("TEST_SKILLS_SERVED", "").split(",") if n]
for _name, _options in SKILLS.items():
    if not _wanted or _name in _wanted:
        globals()[_name] = task(_name, **_options)(_note)
