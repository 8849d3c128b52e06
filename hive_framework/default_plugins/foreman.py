"""Default router (``trylast``): tasks with node requirements go to the least-loaded node that meets them.

Tasks without requirements stay on the shared priority queues, where any idle spore takes them first.
"""

from __future__ import annotations

from typing import Any

from ..config import HiveConfig
from ..hookspecs import hookimpl
from ..models import NodeInfo, TaskMessage


def node_meets(node: NodeInfo, requirements: dict[str, Any]) -> bool:
    """True when ``node`` offers every capability in ``requirements``."""
    caps = node.capabilities
    for key, wanted in requirements.items():
        if key == "tags":
            if not _tags(wanted) <= _tags(caps.get("tags", [])):
                return False
        elif key == "min_free_memory_mb":
            if float(caps.get("free_memory_mb", 0)) < float(wanted):
                return False
        elif caps.get(key) != wanted:
            return False
    return True


def _tags(value: Any) -> set[str]:
    """Tags as a set; a lone string is one tag (``set("ml")`` would be the letters)."""
    return {value} if isinstance(value, str) else set(value or ())


def load_score(node: NodeInfo) -> float:
    """The seed's formula on percentages: cpu*0.4 + mem*0.3 + min(active/10, 1)*100*0.3."""
    return node.cpu_usage * 0.4 + node.memory_usage * 0.3 + min(node.active_tasks / 10, 1.0) * 100 * 0.3


@hookimpl(trylast=True)
def route_task(task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
    if not task.requirements:
        return None
    eligible = [n for n in nodes if not n.paused and node_meets(n, task.requirements)]
    if not eligible:
        return None
    return min(eligible, key=load_score).node_id
