"""A third-party hive plugin: a task type (found by ``@task``) and a broadcast command (a hook impl)."""

from __future__ import annotations

from typing import Any

from hive_framework import BroadcastMessage, hookimpl, task

GREETING = "hello from hive-plugin-example"


@task("example_reverse", priority="high_priority", max_retries=0)
def example_reverse(payload: dict[str, Any]) -> dict[str, Any]:
    """Reverse ``payload['text']``."""
    return {"reversed": str(payload.get("text", ""))[::-1], "plugin": "hive-plugin-example"}


@hookimpl
def on_broadcast(message: BroadcastMessage, context: Any) -> str | None:
    if message.command.upper() == "EXAMPLE_HELLO":
        return GREETING
    return None
