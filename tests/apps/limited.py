"""Task types with limits, for tests/test_limits.py (loaded with ``--app tests.apps.limited``).

Each task records, in Redis under the test's prefix, when it started (Redis's clock, so spores agree) and how
many of its type ran at that moment on its spore and across the hive."""

from __future__ import annotations

import asyncio
from typing import Any

from hive_framework import TaskContext, task

#: INCR the hive-wide and per-spore running counters, and log both with the start time on Redis's clock.
_START = """
local t = redis.call('TIME')
local hive = redis.call('INCR', KEYS[1])
local here = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[3], cjson.encode({t = tonumber(t[1]) + tonumber(t[2]) / 1e6, hive = hive, here = here,
                                           node = ARGV[1]}))
return 1
"""


async def _run(name: str, payload: dict[str, Any], context: TaskContext) -> str:
    base = f"{context.config.key_prefix}:test:{name}"
    keys = [f"{base}:running", f"{base}:running:{context.node_name}", f"{base}:starts"]
    await context.redis.eval(_START, 3, *keys, context.node_name)
    try:
        await asyncio.sleep(float(payload.get("s", 0)))
    finally:
        await context.redis.decr(keys[0])
        await context.redis.decr(keys[1])
    return context.node_name


@task("capped", concurrency=2)
async def capped(payload: dict[str, Any], context: TaskContext) -> str:
    """At most two at once on one spore."""
    return await _run("capped", payload, context)


@task("rated", rate="10/s")
async def rated(payload: dict[str, Any], context: TaskContext) -> str:
    """At most ten a second across the hive, one at a time (burst 1)."""
    return await _run("rated", payload, context)


@task("free")
async def free(payload: dict[str, Any], context: TaskContext) -> str:
    """No limit: shares the spore with the limited types."""
    return await _run("free", payload, context)
