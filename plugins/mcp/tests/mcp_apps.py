"""Task types the tests' spores and ``hive mcp`` load (``--app mcp_apps``; the tests folder is on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hive_framework import TaskMessage, hookimpl, task

#: A map-reduce item arrives as {"item": ..., "description": ...}: the schema says what the item must be.
SQUARE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"item": {"type": "integer", "minimum": -1000, "maximum": 1000}, "description": {"type": "string"}},
    "required": ["item"],
}


@task("square", priority="high_priority", reducer="sum", schema=SQUARE_SCHEMA)
def square(payload: dict[str, Any]) -> int:
    """Square an integer item (map-reduce over numbers, reduced with sum)."""
    value: int = payload["item"]
    return value * value


@task("nap", schema={"type": "object", "properties": {"item": {"type": "number", "minimum": 0}}, "required": ["item"]})
async def nap(payload: dict[str, Any]) -> float:
    """Sleep item seconds (a long task, to cancel)."""
    seconds = float(payload["item"])
    await asyncio.sleep(seconds)
    return seconds


@task("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload as it came (no schema: anything goes)."""
    return payload


@hookimpl
async def before_task(task: TaskMessage, node_id: str) -> None:
    """Scan shards take at least ``MCP_TEST_SHARD_SECONDS`` on spores given it: a cancel then always lands
    while most shards of a scan are still queued, however loaded the machine is."""
    seconds = float(os.environ.get("MCP_TEST_SHARD_SECONDS", "0"))
    if seconds and task.task_type == "security_scan":
        await asyncio.sleep(seconds)
