"""Default balancer strategies: ``load_score``, ``least_tasks`` and ``round_robin`` (``route_task`` impls).

``HIVE_BALANCER`` names the one in force (any installed plugin's name works too). The kernel hands a
strategy only online, unpaused nodes that meet the task's requirements, so a strategy is a pure choice
among eligible nodes and can never pick an offline or unfit one.
"""

from __future__ import annotations

import itertools

from ..config import HiveConfig
from ..hookspecs import hookimpl
from ..models import NodeInfo, TaskMessage
from ..policies import load_score


class LoadScoreBalancer:
    """Lowest :func:`load_score` wins (ties: fewest active tasks, then node id)."""

    @hookimpl(trylast=True)
    def route_task(self, task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
        if not nodes:
            return None
        weights = config.balancer_weights
        return min(nodes, key=lambda n: (load_score(n, weights), n.active_tasks, n.node_id)).node_id


class LeastTasksBalancer:
    """Fewest active tasks relative to slots wins."""

    @hookimpl(trylast=True)
    def route_task(self, task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
        if not nodes:
            return None
        return min(nodes, key=lambda n: (n.active_tasks / max(n.concurrency, 1), n.active_tasks, n.node_id)).node_id


class RoundRobinBalancer:
    """Each call takes the next eligible node in id order."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    @hookimpl(trylast=True)
    def route_task(self, task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
        if not nodes:
            return None
        ordered = sorted(nodes, key=lambda n: n.node_id)
        return ordered[next(self._counter) % len(ordered)].node_id


load_score_balancer = LoadScoreBalancer()
least_tasks_balancer = LeastTasksBalancer()
round_robin_balancer = RoundRobinBalancer()
