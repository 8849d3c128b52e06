"""A third-party balancer strategy: a ``route_task`` impl, chosen with ``HIVE_BALANCER=last_id``.

The kernel hands it only online, unpaused nodes that meet the task's requirements, so it just chooses.
"""

from __future__ import annotations

from typing import Any

from hive_framework import hookimpl


@hookimpl
def route_task(task: Any, nodes: list[Any], config: Any) -> str | None:
    """The eligible node whose id sorts last."""
    return max((n.node_id for n in nodes), default=None)
