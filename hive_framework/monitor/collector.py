"""What the Hive Monitor shows, read from Redis: one snapshot per tick, shared by every open page.

Everything comes from the keys every hive process already writes (heartbeats, status indexes scored by
time, queues, dead letters, job event streams), so any number of nexus processes show the same cluster
and a restarted monitor loses nothing but its queue-depth history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import redisutil, wire
from ..broker.finished import THROUGHPUT_BUCKET_S, throughput
from ..broker.placement import is_unserved, unserved_reason, waiting_for_spores
from ..foreman import ForemanAgent
from ..models import NodeInfo, TaskMessage, TaskStatus, utcnow
from ..redisutil import execute_or_empty, raise_if_cancelling, read_or_empty, text
from ..schedules import schedule_rows
from .metrics import MonitorMetrics

if TYPE_CHECKING:
    from ..broker import MessageBroker

logger = logging.getLogger(__name__)

#: Statuses in the order the dashboard lists them.
STATUSES = tuple(TaskStatus)
#: Longest error text a task row carries (the task's own page has all of it).
ERROR_CHARS = 500


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def task_row(message: TaskMessage, now: datetime | None = None) -> dict[str, Any]:
    """One task as the dashboard lists it: status, node, duration (so far, while running), attempt."""
    now = now or utcnow()
    duration: float | None = None
    if message.started_at is not None:
        end = message.completed_at or (now if message.status == TaskStatus.RUNNING else None)
        if end is not None:
            duration = round(max((end - message.started_at).total_seconds(), 0.0), 3)
    error = message.error
    if error is not None and len(error) > ERROR_CHARS:
        error = error[:ERROR_CHARS] + "…"
    return {
        "task_id": message.task_id,
        "task_type": message.task_type,
        "status": message.status.value,
        "node": message.assigned_node,
        "attempt": message.attempt,
        "max_retries": message.max_retries,
        "priority": message.priority,
        "job_id": message.job_id,
        "created_at": _iso(message.created_at),
        "started_at": _iso(message.started_at),
        "completed_at": _iso(message.completed_at),
        "duration": duration,
        "error": error,
        "reason": message.reason,
        #: When a delayed task is due (``None``: it was not delayed).
        "eta": _iso(message.eta),
        #: Queued, but no online spore served its type when it was queued (the reason says which).
        "waiting_for_spore": is_unserved(message),
    }


class _JobProgress:
    """What the monitor has read so far of one job's event stream."""

    __slots__ = ("cursor", "statuses")

    def __init__(self) -> None:
        self.cursor = "0-0"
        self.statuses: dict[str, str] = {}


class Monitor:
    """The dashboard's data: ``snapshot()`` and its parts, plus a loop that publishes one snapshot per
    ``interval`` to every subscribed page (Redis is read once per tick however many pages are open).

    ``watchdog`` (the nexus's) adds the leader flag and the watchdog's counts; ``token`` is the one actions need.
    """

    def __init__(
        self,
        broker: MessageBroker,
        *,
        watchdog: Any = None,
        interval: float = 1.0,
        recent: int = 50,
        history_seconds: int = 600,
        bucket_seconds: int = 10,
    ) -> None:
        self.broker = broker
        self.config = broker.config
        self.keys = broker.keys
        self.watchdog = watchdog
        self.interval = interval
        self.recent = recent
        self.history_seconds = history_seconds
        self.bucket_seconds = bucket_seconds
        self.foreman = ForemanAgent(broker)  # never started: refreshed by each snapshot
        self.metrics = MonitorMetrics(self)
        #: (time, high, background) queue depths, one per tick: the depth chart.
        self.depth_history: deque[tuple[float, int, int]] = deque(
            maxlen=max(int(history_seconds / max(interval, 0.1)), 10)
        )
        self._jobs: dict[str, _JobProgress] = {}
        self._subscribers = 0
        self._version = 0
        self._payload: str | None = None
        self._published = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def actions_enabled(self) -> bool:
        return bool(self.config.monitor_token)

    # --- the parts of a snapshot ------------------------------------------------------------------------

    async def nodes(self) -> dict[str, Any]:
        """Foreman's cluster status (online and lost nodes) plus each node's own queue, slots and task types."""
        await self.foreman.refresh()
        status = self.foreman.get_cluster_status()
        infos: dict[str, NodeInfo] = {n.node_id: n for n in (*self.foreman.nodes, *self.foreman.offline)}
        depths = await self.queue_lengths([self.keys.node_queue(row["node_id"]) for row in status["nodes"]])
        for row, depth in zip(status["nodes"], depths, strict=True):
            info = infos[row["node_id"]]
            row.update(
                queued=depth,
                concurrency=info.concurrency,
                task_types=sorted(info.task_types),
                started_at=_iso(info.started_at),
            )
        return status

    async def queues(self) -> dict[str, Any]:
        """Counts by status, depth per priority, throughput per bucket and the depth history."""
        stats = await self.broker.get_queue_stats()
        waiting_for = await waiting_for_spores(self.broker.redis, self.keys, await self.broker.get_nodes())
        now = time.time()
        self._sample_depth(now, stats)
        step = self.bucket_seconds
        count = max(self.history_seconds // step, 1)
        end = math.ceil(now / step) * step
        starts = [end - (count - i) * step for i in range(count)]
        finished = (TaskStatus.COMPLETED, TaskStatus.FAILED)
        # The stored buckets are 10 s wide: a wider step sums them, and the last minute is the latest six.
        width = THROUGHPUT_BUCKET_S
        per = max(step // width, 1)
        last = math.floor(now / width) * width
        minute = [last - k * width for k in range(60 // width)]
        fine = sorted({start + k * width for start in starts for k in range(per)}.union(minute))
        counted = await throughput(self.broker.redis, self.keys, finished, fine)
        at = {status: dict(zip(fine, counted[status], strict=True)) for status in finished}
        series = {status.value: [sum(at[status].get(start + k * width, 0) for k in range(per)) for start in starts]
                  for status in finished}
        last_minute = [sum(at[status][start] for start in minute) for status in finished]
        return {
            "stats": stats,
            "waiting_for_spores": {t: {"tasks": n, "reason": unserved_reason(t)} for t, n in waiting_for.items()},
            "depth": {"high_priority": stats["high_priority_queue"], "background": stats["background_queue"]},
            "names": {"high_priority": self.keys.high_queue, "background": self.keys.background_queue},
            "throughput": {
                "bucket_seconds": step,
                "start": starts[0],
                "end": end,
                "completed": series[TaskStatus.COMPLETED.value],
                "failed": series[TaskStatus.FAILED.value],
                "last_minute": {"completed": last_minute[0], "failed": last_minute[1]},
            },
            "depth_history": [list(sample) for sample in self.depth_history],
        }

    def _sample_depth(self, now: float, stats: dict[str, int]) -> None:
        if self.depth_history and now - self.depth_history[-1][0] < self.interval / 2:
            return
        self.depth_history.append((round(now, 3), stats["high_priority_queue"], stats["background_queue"]))

    async def recent_tasks(
        self, limit: int | None = None, *, status: str | None = None, query: str | None = None
    ) -> list[dict[str, Any]]:
        """The tasks whose status changed last, newest first; ``status`` keeps one status, ``query`` ids
        containing it (an exact id is found even when it is not among the recent ones)."""
        limit = limit or self.recent
        statuses = [TaskStatus(status)] if status else list(STATUSES)
        window = limit if not query else max(limit, 500)
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            for each in statuses:
                if each == TaskStatus.SCHEDULED and not status:
                    # Scored by due time: in the every-status view only the due ones (the rest sort into the
                    # future); the scheduled filter lists them all, the latest due first.
                    pipe.zrevrangebyscore(self.keys.status_index(each), time.time(), "-inf", start=0, num=window,
                                          withscores=True)
                else:
                    pipe.zrevrange(self.keys.status_index(each), 0, window - 1, withscores=True)
            results = await execute_or_empty(pipe, [])
        latest: dict[str, float] = {}
        for entries in results:
            for raw_id, score in entries:
                task_id = text(raw_id)
                if score > latest.get(task_id, -math.inf):
                    latest[task_id] = score
        ids = sorted(latest, key=lambda t: latest[t], reverse=True)
        if query:
            needle = query.strip().lower()
            ids = [t for t in ids if needle in t.lower()]
            if query.strip() not in ids:
                ids.insert(0, query.strip())
        now = utcnow()
        rows = [task_row(m, now) for m in await self.broker.get_tasks(ids[:limit]) if m is not None]
        if status:
            rows = [r for r in rows if r["status"] == status]
        return rows

    async def task(self, task_id: str) -> dict[str, Any] | None:
        """Everything stored about one task (payload, result, error in full, latest progress) plus its duration."""
        message = await self.broker.get_task_with_progress(task_id)
        if message is None:
            return None
        plain: dict[str, Any] = wire.to_plain(message)
        plain["duration"] = task_row(message)["duration"]
        return plain

    async def jobs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest map-reduce jobs with their progress, read incrementally from each job's event stream."""
        redis = self.broker.redis
        newest = await read_or_empty(redis.zrevrange(self.keys.jobs, 0, limit - 1, withscores=True), [], self.keys.jobs)
        listed = [(text(job_id), score) for job_id, score in newest]
        if not listed:
            self._jobs.clear()
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for job_id, _ in listed:
                pipe.hgetall(self.keys.job_info(job_id))
            infos = await execute_or_empty(pipe, {})
        self._jobs = {job_id: self._jobs.get(job_id) or _JobProgress() for job_id, _ in listed}
        rows = []
        for (job_id, score), raw_info in zip(listed, infos, strict=True):
            if not raw_info:
                continue  # expired
            info = redisutil.fields(raw_info)
            progress = self._jobs[job_id]
            await self._read_job_events(job_id, progress)
            counts = {s.value: 0 for s in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)}
            for value in progress.statuses.values():
                counts[value] = counts.get(value, 0) + 1
            total = int(info.get("tasks", "0") or 0)
            done = min(len(progress.statuses), total) if total else len(progress.statuses)
            rows.append(
                {
                    "job_id": job_id,
                    "task_type": info.get("task_type", ""),
                    "description": info.get("description", ""),
                    "items": int(info.get("items", "0") or 0),
                    "tasks": total,
                    "done": done,
                    "completed": counts[TaskStatus.COMPLETED.value],
                    "failed": counts[TaskStatus.FAILED.value],
                    "cancelled": counts[TaskStatus.CANCELLED.value],
                    "progress": round(done / total, 4) if total else 0.0,
                    "finished": bool(total) and done >= total,
                    "created_at": datetime.fromtimestamp(score, tz=UTC).isoformat(),
                }
            )
        return rows

    async def _read_job_events(self, job_id: str, progress: _JobProgress) -> None:
        key = self.keys.job_events(job_id)
        while True:
            raise_if_cancelling()
            response = await self.broker.redis.xread({key: progress.cursor}, count=5000)
            entries = [entry for _stream, batch in response or [] for entry in batch]
            for entry_id, fields in entries:
                progress.cursor = text(entry_id)
                task_id = fields.get(b"task_id", fields.get("task_id"))
                status = fields.get(b"status", fields.get("status"))
                if task_id is not None and status is not None:
                    progress.statuses[text(task_id)] = text(status)
            if len(entries) < 5000:
                return

    async def trouble(self, limit: int = 50) -> dict[str, Any]:
        """Zombies (running on a lost node or past ``HIVE_ZOMBIE_TASK_TIMEOUT``), dead letters, parked tasks."""
        now = utcnow()
        zombies = await self.broker.detect_zombie_tasks()
        online = {n.node_id for n in await self.broker.get_nodes()}
        zombie_rows = []
        for message in zombies:
            row = task_row(message, now)
            row["why"] = (
                f"node {message.assigned_node} stopped beating"
                if message.assigned_node not in online
                else f"running longer than HIVE_ZOMBIE_TASK_TIMEOUT={self.config.zombie_task_timeout:g}s"
            )
            zombie_rows.append(row)
        dead = await self.broker.dead_letters(limit)
        dead_count, parked = await self.zcards([self.keys.dead_letters, self.keys.unrouted])
        return {
            "zombies": zombie_rows,
            "dead_letters": [task_row(m, now) for m in dead],
            "dead_letter_count": dead_count,
            "parked": parked,
        }

    async def ota(self) -> dict[str, Any]:
        """Each node's OTA rollout state, from the hash an OTA plugin keeps (empty when there is none)."""
        raw = await read_or_empty(self.broker.redis.hgetall(self.keys.ota_rollout), {}, self.keys.ota_rollout)
        states: dict[str, Any] = {}
        for node, value in sorted(redisutil.fields(raw).items()):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
            states[node] = parsed if isinstance(parsed, dict) else {"state": parsed}
        return states

    async def schedules(self) -> list[dict[str, Any]]:
        """The periodic tasks the leading nexus published, with their last and next ticks as ISO times."""
        rows = await schedule_rows(self.broker)
        for row in rows:
            for key in ("last_tick", "next_tick"):
                row[key] = None if row[key] is None else datetime.fromtimestamp(row[key], UTC).isoformat()
        return rows

    def nexus(self) -> dict[str, Any] | None:
        if self.watchdog is None:
            return None
        return {
            "identity": self.watchdog.identity,
            "leader": bool(self.watchdog.is_leader),
            "watchdog": dict(self.watchdog.stats),
        }

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, in one JSON-ready dict (``/api/snapshot`` and each live update)."""
        nodes, queues, tasks, jobs, trouble, ota, schedules = await asyncio.gather(
            self.nodes(), self.queues(), self.recent_tasks(), self.jobs(), self.trouble(), self.ota(),
            self.schedules()
        )
        return {
            "generated_at": utcnow().isoformat(),
            "cluster": nodes,
            "queues": queues,
            "tasks": tasks,
            "jobs": jobs,
            "trouble": trouble,
            "ota": ota,
            "schedules": schedules,
            "nexus": self.nexus(),
            "actions_enabled": self.actions_enabled,
        }

    async def queue_lengths(self, keys: Iterable[str]) -> list[int]:
        """Length of each queue, as the engine in force counts its jobs, in one round trip."""
        names = list(keys)
        if not names:
            return []
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            for name in names:
                self.broker.engine.queue_depth_ops(pipe, name)
            return [int(n or 0) for n in await execute_or_empty(pipe, 0)]

    async def zcards(self, keys: Iterable[str]) -> list[int]:
        """The sizes of the sorted sets ``keys``, in one round trip."""
        names = list(keys)
        if not names:
            return []
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(name)
            return [int(n) for n in await execute_or_empty(pipe, 0)]

    # --- the live loop ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop (idempotent): it samples depths always, snapshots while watched."""
        if self._task is None and not self.closed:
            self._task = asyncio.create_task(self._run(), name="hive-monitor")

    async def stop(self) -> None:
        """Stop the loop and release every page waiting for an update (their streams end)."""
        self.closed = True
        self._published.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            raise_if_cancelling()
            watched = self._subscribers > 0
            try:
                await self.tick(full=watched)
                if failing:
                    logger.info("monitor: reading the cluster works again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("monitor: cannot read the cluster: %s", exc)
                failing = True
                if watched:
                    self._publish(json.dumps({"generated_at": utcnow().isoformat(), "error": str(exc)}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def tick(self, *, full: bool) -> None:
        """One pass: a snapshot for the pages (``full``), else a depth sample."""
        if full:
            snap = await self.snapshot()
            self._publish(json.dumps(snap, separators=(",", ":"), default=str))
        else:
            self._sample_depth(time.time(), await self.broker.get_queue_stats())

    def _publish(self, payload: str) -> None:
        self._payload = payload
        self._version += 1
        published, self._published = self._published, asyncio.Event()
        published.set()

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[None]:
        """While inside, the loop publishes full snapshots (a page is watching)."""
        self._subscribers += 1
        self.start()
        self._wake.set()
        try:
            yield
        finally:
            self._subscribers -= 1
            if self._subscribers == 0:
                self._payload = None  # a page opened later must not be shown a stale one first

    async def next_payload(self, after: int, timeout: float) -> tuple[int, str | None]:
        """The first snapshot (JSON) published after version ``after``, or ``(after, None)`` after ``timeout``."""
        if self._version <= after or self._payload is None:
            waiting = self._published
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting.wait(), timeout)
        if self._version > after and self._payload is not None and not self.closed:
            return self._version, self._payload
        return after, None
