"""Task types the tests' spores and ``hive mcp`` load (``--app mcp_apps``; the tests folder is on PYTHONPATH)."""

from __future__ import annotations

import asyncio
from typing import Any

from hive_framework import task

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
