"""A task type of its own for the engine contract suite: spores loading only this module serve only it."""

from __future__ import annotations

from typing import Any

from .. import TaskContext, task
from ..redisutil import awaited


@task("contract.other")
async def other(payload: dict[str, Any], context: TaskContext) -> str:
    """Append the label to the contract's start order list, as ``contract.record`` does; return the label."""
    await awaited(context.redis.rpush(":".join((context.config.key_prefix, "contract", "order")), payload["label"]))
    return str(payload["label"])
