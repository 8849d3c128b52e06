"""Prometheus metrics for the Hive Monitor's ``/metrics``.

Gauges (queue depths, tasks by status, zombies, dead letters, nodes' CPU and memory) are read from Redis at
scrape time, so every nexus reports the same cluster. Counters and the duration histogram are this monitor's
own: it follows the status indexes (scored by time) and observes each task once as it reaches a final
status, whichever spore ran it. Like any Prometheus counter they start at zero when the process starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..backlog import autoscale_families, backlog_families, read_backlog
from ..models import TaskStatus
from ..redisutil import text

if TYPE_CHECKING:
    from ..broker import MessageBroker

#: Final statuses whose tasks the counters and the histogram follow.
FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
#: Seconds the monitor looks back behind the newest finish it saw, for writes from slower clocks.
OVERLAP_S = 5.0
#: Most new finishes read per status and pass.
BATCH = 5000
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class MetricsSource(Protocol):
    """What the metrics read from the monitor (:class:`~hive_framework.monitor.collector.Monitor` is one)."""

    @property
    def broker(self) -> MessageBroker: ...

    @property
    def watchdog(self) -> Any: ...

    async def nodes(self) -> dict[str, Any]:
        """The cluster view: ``{"nodes": [row, ...], ...}`` as the dashboard shows it."""
        ...

    async def zcards(self, keys: Iterable[str]) -> list[int]:
        """The sizes of the sorted sets ``keys``."""
        ...


class _Families(Collector):
    """Hands the registry the gauge families computed by the last :meth:`MonitorMetrics.render`."""

    def __init__(self, owner: MonitorMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        yield from self.owner.families


class MonitorMetrics:
    """The monitor's Prometheus registry: ``await render()`` returns the text exposition."""

    def __init__(self, monitor: MetricsSource) -> None:
        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram(
            "hive_task_duration_seconds",
            "Run time of the last attempt of tasks seen finishing (started to finished), seconds.",
            ["task_type", "status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "hive_tasks_finished", "Tasks seen reaching a final status.", ["status"], registry=self.registry
        )
        self.retries = Counter(
            "hive_task_retries",
            "Retries (attempts after the first) of the tasks seen finishing.",
            ["task_type"],
            registry=self.registry,
        )
        self.families: list[Metric] = []
        self.registry.register(_Families(self))
        self._cursor = time.time()
        self._seen: dict[tuple[str, str, float], float] = {}
        self._lock = asyncio.Lock()

    async def observe_finished(self) -> int:
        """Count and time the tasks that reached a final status since the last pass; returns how many."""
        async with self._lock:
            return await self._observe()

    async def _observe(self) -> int:
        broker = self.monitor.broker
        low = self._cursor - OVERLAP_S
        per_status: dict[TaskStatus, int] = {}
        for _, status, _ in self._seen:
            per_status[TaskStatus(status)] = per_status.get(TaskStatus(status), 0) + 1
        async with broker.redis.pipeline(transaction=False) as pipe:
            for status in FINAL:
                pipe.zrangebyscore(
                    broker.keys.status_index(status), f"({low}", "+inf",
                    start=0, num=per_status.get(status, 0) + BATCH, withscores=True,
                )
            results = await pipe.execute()
        fresh: list[tuple[str, str, float]] = []
        for status, entries in zip(FINAL, results, strict=True):
            for raw_id, score in entries:
                key = (text(raw_id), status.value, float(score))
                if key not in self._seen:
                    fresh.append(key)
        if not fresh:
            return 0
        messages = await broker.get_tasks([task_id for task_id, _, _ in fresh])
        for (task_id, status, score), message in zip(fresh, messages, strict=True):
            self._seen[(task_id, status, score)] = score
            self._cursor = max(self._cursor, score)
            if message is None or message.status.value != status:
                continue  # expired or moved on (retried) since: its next finish will count
            self.finished.labels(status=status).inc()
            if message.attempt > 1:
                self.retries.labels(task_type=message.task_type).inc(message.attempt - 1)
            if message.started_at is not None and message.completed_at is not None and status != "cancelled":
                seconds = max((message.completed_at - message.started_at).total_seconds(), 0.0)
                self.duration.labels(task_type=message.task_type, status=status).observe(seconds)
        horizon = self._cursor - 2 * OVERLAP_S
        self._seen = {k: s for k, s in self._seen.items() if s > horizon}
        return len(fresh)

    async def render(self) -> bytes:
        """The Prometheus text exposition: this monitor's counters plus gauges read from Redis now."""
        async with self._lock:
            await self._observe()
            self.families = await self._gauges()
            return generate_latest(self.registry)

    async def _gauges(self) -> list[Metric]:
        monitor = self.monitor
        broker = monitor.broker
        stats = await broker.get_queue_stats()
        cluster = await monitor.nodes()
        zombies = await broker.detect_zombie_tasks()
        dead, parked, quarantined = await monitor.zcards(
            [broker.keys.dead_letters, broker.keys.unrouted, broker.keys.dead_records_index]
        )

        depth = GaugeMetricFamily(
            "hive_queue_depth", "Jobs on each shared queue, by priority class (started ones included).",
            labels=["queue"],
        )
        depth.add_metric(["high_priority"], stats["high_priority_queue"])
        depth.add_metric(["background"], stats["background_queue"])
        tasks = GaugeMetricFamily("hive_tasks", "Tasks in each status (finished ones for HIVE_RESULT_TTL).",
                                  labels=["status"])
        by_status = {
            TaskStatus.WAITING: stats["tasks_waiting"],
            TaskStatus.SCHEDULED: stats["tasks_scheduled"],
            TaskStatus.PENDING: stats["tasks_pending"] - stats["tasks_retrying"],
            TaskStatus.RUNNING: stats["tasks_running"],
            TaskStatus.RETRYING: stats["tasks_retrying"],
            TaskStatus.COMPLETED: stats["tasks_completed"],
            TaskStatus.FAILED: stats["tasks_failed"],
            TaskStatus.CANCELLED: stats["tasks_cancelled"],
        }
        for status, count in by_status.items():
            tasks.add_metric([status.value], count)

        rows: Sequence[dict[str, Any]] = cluster["nodes"]
        node_queue = GaugeMetricFamily("hive_node_queue_depth", "Jobs on a node's own queue.", labels=["node"])
        up = GaugeMetricFamily("hive_node_up", "1 while a node beats, 0 for a node that was lost.",
                               labels=["node", "node_name"])
        cpu = GaugeMetricFamily("hive_node_cpu_percent", "CPU use of an online node, percent.", labels=["node"])
        memory = GaugeMetricFamily("hive_node_memory_percent", "Memory use of an online node, percent.",
                                   labels=["node"])
        active = GaugeMetricFamily("hive_node_active_tasks", "Tasks an online node runs now.", labels=["node"])
        load = GaugeMetricFamily("hive_node_load_score", "An online node's load score (lower is freer).",
                                 labels=["node"])
        nodes = GaugeMetricFamily("hive_nodes", "Nodes by state.", labels=["state"])
        states = {"online": 0, "paused": 0, "offline": 0}
        for row in rows:
            node = str(row["node_id"])
            node_queue.add_metric([node], row.get("queued", 0))
            up.add_metric([node, str(row["node_name"])], 1 if row["is_online"] else 0)
            if not row["is_online"]:
                states["offline"] += 1
                continue
            states["paused" if row["paused"] else "online"] += 1
            cpu.add_metric([node], row["cpu_usage"])
            memory.add_metric([node], row["memory_usage"])
            active.add_metric([node], row["active_tasks"])
            load.add_metric([node], row["load_score"])
        for state, count in states.items():
            nodes.add_metric([state], count)

        families: list[Metric] = [depth, tasks, node_queue, up, cpu, memory, active, load, nodes]
        families += backlog_families(await read_backlog(broker))
        families += await autoscale_families(broker)
        families.append(GaugeMetricFamily("hive_zombie_tasks", "Running tasks whose node is lost or that ran "
                                          "past HIVE_ZOMBIE_TASK_TIMEOUT.", value=len(zombies)))
        families.append(GaugeMetricFamily("hive_dead_letters", "Tasks that failed for good.", value=dead))
        families.append(GaugeMetricFamily("hive_quarantined_records", "Records that could not be decoded, set "
                                          "aside with their raw bytes (hive dead --records).", value=quarantined))
        families.append(GaugeMetricFamily("hive_parked_tasks", "Tasks waiting for a node that meets their "
                                          "requirements.", value=parked))
        watchdog = monitor.watchdog
        if watchdog is not None:
            families.append(GaugeMetricFamily("hive_nexus_leader", "1 when this nexus's watchdog leads.",
                                              value=1 if watchdog.is_leader else 0))
            actions = CounterMetricFamily("hive_watchdog_actions", "What this nexus's watchdog did.",
                                          labels=["action"])
            for action, count in sorted(watchdog.stats.items()):
                actions.add_metric([action], count)
            families.append(actions)
        return families
