"""The backlog: tasks queued and not yet taken by a spore, per queue and per task type, and how long the oldest
has waited. What ``/metrics`` exposes for scalers (Prometheus adapter, KEDA's Prometheus scaler) and what the
local autoscaler decides on.

Engine-neutral: it reads the ``pending`` status index (task id scored by the time it became pending), the due
part of the ``scheduled`` one (delayed tasks, scored by when they are due) and the tasks' JSON, so it counts the
same for the streams and the arq engine. A task's wait is measured from when it last became pending (enqueued,
or put back by a retry or a stopping spore), a delayed task's from when it became due (one not due is no
backlog). One pass reads at most ``limit`` tasks, the oldest first; past that the per-queue and per-type counts
cover the oldest ``limit`` and :attr:`Backlog.truncated` says so (the total and the oldest age stay exact).
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

from .models import TaskStatus
from .redisutil import texts

#: Seconds an autoscaler's published state is kept after its last tick (then it is shown no more).
STATE_TTL = 60.0
#: Most pending tasks one pass reads (one ZRANGE and one MGET).
DEFAULT_LIMIT = 10_000


@attrs.frozen
class QueueBacklog:
    """One queue's waiting tasks and the age of its oldest, seconds."""

    waiting: int
    oldest_age: float


@attrs.frozen
class Backlog:
    """A snapshot of the tasks waiting for a spore."""

    total: int = 0
    oldest_age: float = 0.0
    by_queue: dict[str, QueueBacklog] = attrs.field(factory=dict)
    by_type: dict[str, int] = attrs.field(factory=dict)
    truncated: bool = False
    read_at: float = attrs.field(factory=time.time)


async def read_backlog(broker: Any, *, limit: int = DEFAULT_LIMIT) -> Backlog:
    """Read the backlog of ``broker``'s hive (a connected :class:`~hive_framework.MessageBroker`)."""
    index = broker.keys.status_index(TaskStatus.PENDING)
    scheduled = broker.keys.status_index(TaskStatus.SCHEDULED)
    now = time.time()
    async with broker.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(index)
        pipe.zrange(index, 0, limit - 1, withscores=True)
        # Delayed tasks now due and not yet taken wait for a spore too (their index is scored by due time).
        pipe.zcount(scheduled, "-inf", now)
        pipe.zrangebyscore(scheduled, "-inf", now, start=0, num=limit, withscores=True)
        total, entries, due_total, due = await pipe.execute()
    total += due_total
    entries = sorted([*entries, *due], key=lambda entry: entry[1])[:limit]
    if not entries:
        return Backlog(read_at=now)
    ids = texts(raw for raw, _ in entries)
    raws = await broker.redis.mget([broker.keys.task(t) for t in ids])
    by_queue: dict[str, list[float]] = {}
    by_type: dict[str, int] = {}
    counted = 0
    for (_, score), raw in zip(entries, raws, strict=True):
        if raw is None:
            continue  # expired or deleted between the two reads
        try:
            task = json.loads(raw)
            queue, task_type = str(task.get("queue") or "unrouted"), str(task["task_type"])
            if task.get("status", "pending") not in (TaskStatus.PENDING.value, TaskStatus.SCHEDULED.value):
                continue  # moved on between the two reads
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        counted += 1
        age = max(now - float(score), 0.0)
        slot = by_queue.setdefault(queue, [0, 0.0])
        slot[0] += 1
        slot[1] = max(slot[1], age)
        by_type[task_type] = by_type.get(task_type, 0) + 1
    oldest = max((slot[1] for slot in by_queue.values()), default=0.0)
    return Backlog(
        total=int(total) - (len(entries) - counted),
        oldest_age=oldest,
        by_queue={q: QueueBacklog(int(s[0]), float(s[1])) for q, s in sorted(by_queue.items())},
        by_type=dict(sorted(by_type.items())),
        truncated=int(total) > len(entries),
        read_at=now,
    )


def backlog_families(backlog: Backlog) -> list[Any]:
    """The backlog as Prometheus gauge families (for the Hive Monitor's ``/metrics``)."""
    from prometheus_client.core import GaugeMetricFamily

    waiting = GaugeMetricFamily(
        "hive_queue_waiting_tasks", "Tasks queued and not yet taken by a spore, per queue (stream or list).",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "hive_queue_oldest_task_age_seconds", "How long the oldest waiting task of a queue has waited, seconds.",
        labels=["queue"],
    )
    for queue, slot in backlog.by_queue.items():
        waiting.add_metric([queue], slot.waiting)
        oldest.add_metric([queue], slot.oldest_age)
    by_type = GaugeMetricFamily("hive_task_type_waiting_tasks", "Tasks waiting for a spore, per task type.",
                                labels=["task_type"])
    for task_type, count in backlog.by_type.items():
        by_type.add_metric([task_type], count)
    return [
        waiting, oldest, by_type,
        GaugeMetricFamily("hive_waiting_tasks", "Tasks waiting for a spore, all queues.", value=backlog.total),
        GaugeMetricFamily("hive_oldest_waiting_task_age_seconds", "How long the oldest waiting task has waited.",
                          value=backlog.oldest_age),
        GaugeMetricFamily("hive_backlog_truncated", "1 when the per-queue and per-type gauges cover only the "
                          "oldest waiting tasks (more than one pass reads).", value=1 if backlog.truncated else 0),
    ]


# --- the local autoscalers' published state (written by hive_framework.autoscale) ----------------------

def state_key(broker: Any) -> str:
    """Hash autoscaler id -> its JSON state, read by the Hive Monitor."""
    return f"{broker.keys.prefix}:autoscalers"


async def read_states(broker: Any) -> dict[str, dict[str, Any]]:
    """The published state of every autoscaler that ticked within :data:`STATE_TTL` seconds."""
    raw = await broker.redis.hgetall(state_key(broker))
    now = time.time()
    states = {}
    for ident, value in raw.items():
        try:
            state = json.loads(value)
            if now - float(state["updated_at"]) <= STATE_TTL:
                states[ident.decode() if isinstance(ident, bytes) else str(ident)] = state
        except (ValueError, KeyError, TypeError):
            continue
    return states


async def autoscale_families(broker: Any) -> list[Any]:
    """The autoscalers' state as Prometheus families (``hive_autoscale_*``), for the Hive Monitor's ``/metrics``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    states = await read_states(broker)
    if not states:
        return []
    spores = GaugeMetricFamily("hive_autoscale_spores", "Spore processes an autoscaler runs.", labels=["autoscaler"])
    target = GaugeMetricFamily("hive_autoscale_target_spores", "Spores an autoscaler's last decision wants.",
                               labels=["autoscaler"])
    bounds = GaugeMetricFamily("hive_autoscale_bound_spores", "An autoscaler's MIN and MAX.",
                               labels=["autoscaler", "bound"])
    decisions = CounterMetricFamily("hive_autoscale_decisions", "Spores an autoscaler started (up) or stopped "
                                    "(down).", labels=["autoscaler", "direction"])
    last = GaugeMetricFamily("hive_autoscale_last_decision_timestamp_seconds", "When an autoscaler last "
                             "started or stopped a spore (Unix time).", labels=["autoscaler", "direction"])
    for ident, state in sorted(states.items()):
        spores.add_metric([ident], state["spores"])
        target.add_metric([ident], state["target"])
        bounds.add_metric([ident, "min"], state["min"])
        bounds.add_metric([ident, "max"], state["max"])
        for direction, count in state["decisions"].items():
            decisions.add_metric([ident, direction], count)
        if state["last"]["action"] != "none":
            last.add_metric([ident, state["last"]["action"]], state["last"]["at"])
    return [spores, target, bounds, decisions, last]
