"""The seed's ``ForemanAgent``: a cached view of the cluster, the balancer's choice, and moving tasks to a node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .models import NodeInfo, TaskMessage, utcnow
from .outage import RedisLink, is_outage
from .policies import load_score, node_meets
from .redisutil import raise_if_cancelling

if TYPE_CHECKING:
    from .broker import MessageBroker
    from .kernel import Kernel

__all__ = ["ForemanAgent", "load_score", "node_meets"]

logger = logging.getLogger(__name__)


class ForemanAgent:
    """The seed's load balancer: ``ForemanAgent(message_broker)`` (or ``(kernel, message_broker, node_manager)``).

    ``start()`` keeps a snapshot of the cluster fresh, so ``select_best_node`` and ``get_cluster_status``
    answer synchronously, as in the seed, with no I/O. ``assign_task`` really dispatches: the task moves to
    the chosen node's own queue and only that node runs it.
    """

    def __init__(
        self, *args: Any, node_manager: Any = None, refresh_interval: float | None = None, link: RedisLink | None = None
    ) -> None:
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
        self.link = link or RedisLink(logger, auth_limit=self.kernel.config.redis_auth_limit)

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
            raise_if_cancelling()
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception as exc:
                if is_outage(exc):
                    self.link.lost(exc, "foreman")
                else:
                    logger.warning("foreman refresh failed: %s", exc)
            else:
                self.link.back()

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
