"""Default balancer strategies and the seed's ``ForemanAgent`` (load balancer, cluster view).

A strategy is a plugin implementing ``route_task``; ``HIVE_BALANCER`` names the one in force (built in:
``load_score``, ``least_tasks``, ``round_robin``; any installed plugin's name works too). The kernel
hands a strategy only online, unpaused nodes that meet the task's requirements, so a strategy is a pure
choice among eligible nodes and can never pick an offline or unfit one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..config import HiveConfig
from ..hookspecs import hookimpl
from ..models import NodeInfo, TaskMessage, utcnow

if TYPE_CHECKING:
    from ..kernel import Kernel
    from .broker import MessageBroker

logger = logging.getLogger(__name__)


def node_meets(node: NodeInfo, requirements: dict[str, Any]) -> bool:
    """True when ``node`` offers every capability in ``requirements``.

    ``tags``/``skills``: all listed must be declared; ``min_free_memory_mb``: enough memory free now;
    any other key must equal the node's capability of that name (``{"gpu": True}``).
    """
    caps = node.capabilities
    for key, wanted in requirements.items():
        if key in ("tags", "skills"):
            wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
            if not wanted_set <= set(caps.get(key, [])):
                return False
        elif key == "min_free_memory_mb":
            if float(caps.get("free_memory_mb", 0)) < float(wanted):
                return False
        elif caps.get(key, False if isinstance(wanted, bool) else None) != wanted:
            return False
    return True


def load_score(node: NodeInfo, weights: tuple[float, float, float] = (0.4, 0.3, 0.3)) -> float:
    """The seed's formula, on percentages: ``cpu*0.4 + mem*0.3 + min(active/10, 1)*100*0.3``."""
    cpu_w, mem_w, task_w = weights
    return node.cpu_usage * cpu_w + node.memory_usage * mem_w + min(node.active_tasks / 10, 1.0) * 100 * task_w


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


class ForemanAgent:
    """The seed's load balancer: ``ForemanAgent(message_broker)`` (or ``(kernel, message_broker, node_manager)``).

    ``start()`` keeps a snapshot of the cluster fresh, so ``select_best_node`` and ``get_cluster_status``
    answer synchronously, as in the seed, with no I/O. ``assign_task`` really dispatches: the task moves to
    the chosen node's own queue and only that node runs it.
    """

    def __init__(self, *args: Any, node_manager: Any = None, refresh_interval: float | None = None) -> None:
        from .broker import MessageBroker

        brokers = [a for a in args if isinstance(a, MessageBroker) or hasattr(a, "enqueue_task")]
        if not brokers:
            raise TypeError("ForemanAgent needs a message broker: ForemanAgent(message_broker)")
        self.broker: MessageBroker = brokers[0]
        rest = [a for a in args if a is not self.broker]
        self.node_manager = node_manager if node_manager is not None else (rest[-1] if len(rest) > 1 else None)
        self.kernel: Kernel = self.broker.kernel
        self.refresh_interval = refresh_interval or self.kernel.config.heartbeat_interval
        self.nodes: list[NodeInfo] = []
        self.offline: list[NodeInfo] = []
        self.last_refresh: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect if needed, take a first snapshot and keep it fresh in the background."""
        if not self.broker.is_connected:
            await self.broker.connect()
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="hive-foreman")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        """Read every node's last heartbeat (online and offline) from Redis."""
        online, offline = await self.broker.get_cluster_nodes()
        self.nodes, self.offline = online, offline
        self.last_refresh = utcnow()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception as exc:
                logger.warning("foreman refresh failed: %s", exc)

    def select_best_node(self, task_requirements: dict[str, Any] | None = None) -> str | None:
        """The node the configured strategy picks among online nodes meeting ``task_requirements``."""
        probe = TaskMessage(task_id="select-best-node", task_type="*", requirements=dict(task_requirements or {}))
        return self.kernel.route(probe, self.nodes)

    async def assign_task(self, task_id: str, task_requirements: dict[str, Any] | None = None) -> str | None:
        """Move a queued task to the best node's own queue; returns that node, or ``None`` if none fits now."""
        await self.refresh()
        node_id = self.select_best_node(task_requirements)
        if node_id is None:
            return None
        moved = await self.broker.assign_to_node(task_id, node_id, requirements=task_requirements)
        return node_id if moved else None

    def get_cluster_status(self) -> dict[str, Any]:
        """The seed's cluster summary, from the last snapshot."""
        weights = self.kernel.config.balancer_weights
        online = self.nodes
        rows = [
            {
                "node_id": n.node_id,
                "node_name": n.node_name,
                "is_online": is_online,
                "cpu_usage": n.cpu_usage,
                "memory_usage": n.memory_usage,
                "active_tasks": n.active_tasks,
                "load_score": round(load_score(n, weights), 2),
                "capabilities": n.capabilities,
                "last_heartbeat": n.last_heartbeat.isoformat(),
                "version": n.code_version or n.hive_version,
                "paused": n.paused,
                "host": n.host,
                "pid": n.pid,
            }
            for nodes, is_online in ((online, True), (self.offline, False))
            for n in nodes
        ]
        count = len(online)
        return {
            "total_nodes": count + len(self.offline),
            "online_nodes": count,
            "offline_nodes": len(self.offline),
            "avg_cpu_usage": round(sum(n.cpu_usage for n in online) / count, 2) if count else 0.0,
            "avg_memory_usage": round(sum(n.memory_usage for n in online) / count, 2) if count else 0.0,
            "total_active_tasks": sum(n.active_tasks for n in online),
            "nodes": rows,
        }
