"""Prometheus metrics for the Hive Monitor's ``/metrics``.

Everything is read from Redis at scrape time, so every nexus reports the same cluster: gauges (queue depths,
tasks by status, zombies, dead letters, nodes' CPU and memory) from the keys the hive keeps, and the task
counters and duration histogram from the cluster-wide counters hash (:mod:`hive_framework.counters`), which
the spores' ``counters`` plugin and the broker add to; they survive a Monitor restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError

from .. import redisutil
from ..backlog import autoscale_families, backlog_families, read_backlog
from ..counters import DURATION_BUCKETS, parse_counters
from ..models import TaskStatus
from ..redisutil import awaited

if TYPE_CHECKING:
    from ..broker import MessageBroker

logger = logging.getLogger(__name__)

#: The ``le`` labels of the duration buckets, as prometheus_client writes them (``0.01`` ... ``1800.0``, ``+Inf``).
_LE = tuple("+Inf" if math.isinf(b) else repr(float(b)) for b in DURATION_BUCKETS)
#: Most unreadable counter fields named in one warning.
_NAMED = 5


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
    """Hands the registry the families read by the last :meth:`MonitorMetrics.render`."""

    def __init__(self, owner: MonitorMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        yield from self.owner.families


class MonitorMetrics:
    """The monitor's Prometheus registry: ``await render()`` returns the text exposition."""

    def __init__(self, monitor: MetricsSource) -> None:
        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.families: list[Metric] = []
        self.registry.register(_Families(self))
        self._lock = asyncio.Lock()
        #: Unreadable counter fields already logged (each is logged once per process, not once per scrape).
        self._reported: set[str] = set()

    async def render(self) -> bytes:
        """The Prometheus text exposition: the cluster-wide counters and the gauges, read from Redis now."""
        async with self._lock:
            self.families = [*await self._counters(), *await self._gauges()]
            return generate_latest(self.registry)

    async def _counters(self) -> list[Metric]:
        broker = self.monitor.broker
        try:
            raw = redisutil.fields(await awaited(broker.redis.hgetall(broker.keys.counters)))
        except ResponseError as exc:  # the key holds another type (written by hand): the gauges still render
            if broker.keys.counters not in self._reported:
                self._reported.add(broker.keys.counters)
                logger.warning("monitor: cannot read the task counters %s (%s); /metrics goes without them",
                               broker.keys.counters, exc)
            return []
        counters, skipped = parse_counters(raw)
        fresh = [f for f in skipped if f not in self._reported]
        if fresh:
            self._reported.update(fresh)
            logger.warning("monitor: skipping %d unreadable field(s) of %s: %s", len(fresh), broker.keys.counters,
                           ", ".join(repr(f) for f in fresh[:_NAMED]) + (" ..." if len(fresh) > _NAMED else ""))
        finished = CounterMetricFamily("hive_tasks_finished", "Tasks that reached a final status, hive-wide.",
                                       labels=["status"])
        for status, count in sorted(counters.finished.items()):
            finished.add_metric([status], count)
        retries = CounterMetricFamily("hive_task_retries", "Retries: failed attempts scheduled to run again.",
                                      labels=["task_type"])
        for task_type, count in sorted(counters.retries.items()):
            retries.add_metric([task_type], count)
        duration = HistogramMetricFamily(
            "hive_task_duration_seconds",
            "Run time of the last attempt of tasks that finished (started to finished), seconds.",
            labels=["task_type", "status"],
        )
        for (task_type, status), counts in sorted(counters.buckets.items()):
            cumulative, running = [], 0
            for le, count in zip(_LE, counts, strict=True):
                running += count
                cumulative.append((le, running))
            duration.add_metric([task_type, status], cumulative,
                                sum_value=counters.sums_us.get((task_type, status), 0) / 1e6)
        return [finished, retries, duration]

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
