"""The broker's repairs, run by the nexus and the Foreman: zombies, moves to a node, stranded work.

Each change is a compare-and-set on the task record, so two nexus processes never apply one twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import InvalidTask, WireError
from ..keys import read_task
from ..models import NodeInfo, TaskMessage, TaskStatus, utcnow
from ..redisutil import glob_escape, read_or_empty, start_over_on_watch_error, text, texts
from .placement import is_unserved, unserved_key

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..config import HiveConfig
    from ..kernel import Kernel
    from ..keys import Keys
    from .engine import Engine, Previous


logger = logging.getLogger(__name__)

#: Waiting tasks the watchdog's sweeps read per round trip (those waiting for a spore of their type, and those
#: parked for a node that meets their requirements).
UNSERVED_CHUNK = 500


class RecoveryMixin:
    """Part of :class:`~hive_framework.broker.MessageBroker`: moving tasks that are stuck or misplaced."""

    if TYPE_CHECKING:
        kernel: Kernel
        config: HiveConfig
        keys: Keys
        engine: Engine

        @property
        def redis(self) -> Redis: ...

        async def get_nodes(self, *, include_offline: bool = False) -> list[NodeInfo]: ...
        async def get_tasks(self, task_ids: Sequence[str]) -> list[TaskMessage | None]: ...
        async def get_task_status(self, task_id: str) -> TaskMessage | None: ...
        async def save_task(self, message: TaskMessage, previous: Previous = "unknown") -> None: ...
        async def dispatch(self, message: TaskMessage, *, node: str | None = None) -> None: ...
        async def release_dependents(self, message: TaskMessage, *, only: str | None = None,
                                     dependents: list[str] | None = None) -> None: ...
        def _place(self, message: TaskMessage, nodes: list[NodeInfo], *, node: str | None = None,
                   served: set[str] | None = None) -> None: ...
        def _status_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None: ...
        def _queue_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None: ...
        def _dispatch_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None: ...
        async def quarantine_task(self, task_id: str, raw: Any, reason: str) -> None: ...

    async def requeue_zombie(self, zombie: TaskMessage, reason: str) -> str | None:
        """Re-run a zombie (attempt+1) or, out of retries, fail it; exactly once however many callers race.

        The change is a compare-and-set on the task key: it applies only if the task is still running
        on the same node under the same engine job. Returns the new status, or ``None`` if nothing changed.
        """
        nodes = await self.get_nodes() if zombie.requirements else []
        current = await start_over_on_watch_error(lambda: self._requeue_zombie_once(zombie, reason, nodes))
        if current is None:
            return None
        if current.is_terminal:
            await self.release_dependents(current)
        return current.status.value

    async def _requeue_zombie_once(
        self, zombie: TaskMessage, reason: str, nodes: list[NodeInfo]
    ) -> TaskMessage | None:
        """One pass of :meth:`requeue_zombie`'s compare-and-set: the record as changed, or ``None`` when it is
        no longer that zombie. WatchError (the record changed, or the connection died) means: run it again."""
        key = self.keys.task(zombie.task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            if raw is None:
                return None
            try:
                current = read_task(zombie.task_id, raw)
            except WireError as exc:
                await pipe.reset()
                await self.quarantine_task(zombie.task_id, raw, str(exc))
                return None
            if (current.status, current.assigned_node, current.engine_job_id) != (
                TaskStatus.RUNNING, zombie.assigned_node, zombie.engine_job_id
            ):
                return None
            pipe.multi()
            self.engine.drop_ops(pipe, current)
            current.error = f"zombie: {reason}"
            if current.attempt >= current.max_retries + 1:
                current.status = TaskStatus.FAILED
                current.completed_at = utcnow()
                current.error += f" (no retries left after {current.attempt} attempts)"
                self._status_ops(pipe, current)
            else:
                current.engine_job_id = f"{current.task_id}.z{uuid.uuid4().hex[:8]}"
                current.started_at = None
                self._place(current, nodes)
                self._dispatch_ops(pipe, current)
            await pipe.execute()
        return current

    async def assign_to_node(
        self, task_id: str, node_id: str, *, requirements: dict[str, Any] | None = None
    ) -> bool:
        """Move a task that has not started to ``node_id``'s own queue under a fresh engine job.

        A compare-and-set on the task: ``False`` when a spore started (or took) it meanwhile.
        """
        return await start_over_on_watch_error(lambda: self._assign_to_node_once(task_id, node_id, requirements))

    async def _assign_to_node_once(self, task_id: str, node_id: str, requirements: dict[str, Any] | None) -> bool:
        """One pass of :meth:`assign_to_node`'s compare-and-set. WatchError (the record or the job's lease
        changed, or the connection died) means: run it again, on a fresh read."""
        key = self.keys.task(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            if raw is None:
                raise InvalidTask(f"no task with id {task_id!r}")
            try:
                message = read_task(task_id, raw)
            except WireError as exc:
                await pipe.reset()
                await self.quarantine_task(task_id, raw, str(exc))
                raise InvalidTask(f"task {task_id!r} has an undecodable record (quarantined): {exc}") from None
            parked = message.status == TaskStatus.WAITING and message.queue == ""
            if message.status != TaskStatus.PENDING and not parked:
                return False
            if await self.engine.watch_taken(pipe, message):
                return False
            previous = message.status
            pipe.multi()
            self.engine.drop_ops(pipe, message)
            if requirements:
                message.requirements = {**message.requirements, **requirements}
            message.engine_job_id = f"{task_id}.a{uuid.uuid4().hex[:8]}"
            message.queue = self.engine.queue_for(message.priority, node_id)
            message.assigned_node = node_id
            message.reason = None
            message.status = TaskStatus.PENDING
            self._queue_ops(pipe, message, previous)
            pipe.zrem(self.keys.unrouted, task_id)
            await pipe.execute()
        return True

    async def _waiting_in_chunks(self, key: str) -> AsyncIterator[list[tuple[str, float, TaskMessage | None]]]:
        """The tasks of the waiting index ``key`` with the time each began to wait and its record (``None``: gone),
        :data:`UNSERVED_CHUNK` at a time, each chunk's records read in one round trip."""
        entries = [(text(raw_id), since)
                   for raw_id, since in await read_or_empty(self.redis.zrange(key, 0, -1, withscores=True), [], key)]
        for start in range(0, len(entries), UNSERVED_CHUNK):
            chunk = entries[start : start + UNSERVED_CHUNK]
            messages = await self.get_tasks([task_id for task_id, _ in chunk])
            yield [(task_id, since, message) for (task_id, since), message in zip(chunk, messages, strict=True)]

    async def _expire_unserved(self, nodes: list[NodeInfo], now: float) -> int:
        """Fail the tasks that waited for a spore of their type past their wait timeout; forget the ones that
        no longer wait. A task whose type an online spore serves now is left for it. Returns how many failed."""
        served = {t for n in nodes for t in n.task_types}
        key = unserved_key(self.keys)
        failed = 0
        async for chunk in self._waiting_in_chunks(key):
            # the ones taken meanwhile (or gone) are forgotten in one write
            gone = []
            for task_id, since, message in chunk:
                if message is None or not is_unserved(message):
                    gone.append(task_id)
                    continue
                if message.task_type in served or message.wait_timeout is None or now - since <= message.wait_timeout:
                    continue
                current = await start_over_on_watch_error(
                    partial(self._expire_one, task_id, message.engine_job_id, key))
                if current is None:
                    continue
                failed += 1
                await self.release_dependents(current)
            if gone:
                await self.redis.zrem(key, *gone)
        return failed

    async def _expire_one(self, task_id: str, job: str | None, key: str) -> TaskMessage | None:
        """Fail one task that waited too long for a spore of its type, if its record still shows that wait
        under ``job``: the failed record, or ``None`` when it moved on. WatchError means: run it again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.keys.task(task_id))
            raw = await pipe.get(self.keys.task(task_id))
            try:
                current = None if raw is None else read_task(task_id, raw)
            except WireError as exc:
                await pipe.reset()
                await self.quarantine_task(task_id, raw, str(exc))
                return None
            if current is None or current.engine_job_id != job or not is_unserved(current):
                return None
            if await self.engine.watch_taken(pipe, current):
                return None
            pipe.multi()
            self.engine.drop_ops(pipe, current)
            previous = current.status
            current.status = TaskStatus.FAILED
            current.completed_at = utcnow()
            current.error = (
                f"WaitTimeout: no online spore served `{current.task_type}` within {current.wait_timeout:g}s"
            )
            current.engine_job_id = f"{task_id}.w{uuid.uuid4().hex[:8]}"
            self._status_ops(pipe, current, previous)
            pipe.zrem(key, task_id)
            await pipe.execute()
        return current

    async def reroute_stranded(self, *, now: float | None = None) -> dict[str, int]:
        """Give parked tasks a node that now fits (or fail them past their timeout), and move tasks queued
        for nodes that went offline back through placement. Returns counts of what moved.
        """
        now = time.time() if now is None else now
        counts = {"placed": 0, "expired": 0, "rerouted": 0}
        nodes = await self.get_nodes()
        async for chunk in self._waiting_in_chunks(self.keys.unrouted):
            # the ones that stopped waiting (or are gone) are forgotten in one write
            waiting = [(task_id, since, task) for task_id, since, task in chunk
                       if task is not None and task.status == TaskStatus.WAITING]
            if len(waiting) < len(chunk):
                still = {task_id for task_id, _, _ in waiting}
                await self.redis.zrem(self.keys.unrouted, *(t for t, _, _ in chunk if t not in still))
            for task_id, since, task in waiting:
                try:
                    target = self.kernel.route(task, nodes)
                except Exception:
                    # A balancer that fails on one task (it answers an enqueue with the same error) leaves that
                    # task parked; the others are still placed.
                    logger.exception("task %s stays parked: the balancer failed on it", task_id)
                    continue
                expired = now - since > task.timeout
                if target is None and not expired:
                    continue
                if not await self.redis.zrem(self.keys.unrouted, task_id):
                    continue  # another nexus took it
                if target is None:
                    task.status = TaskStatus.FAILED
                    task.completed_at = utcnow()
                    task.error = f"no online node met {task.requirements} within {task.timeout:g}s"
                    await self.save_task(task)
                    counts["expired"] += 1
                else:
                    await self.dispatch(task, node=target)
                    counts["placed"] += 1
        counts["expired"] += await self._expire_unserved(nodes, now)
        online = {n.node_id for n in nodes}
        known = set(texts(await read_or_empty(self.redis.hkeys(self.keys.node_infos), [], self.keys.node_infos)))
        # A spore that stopped cleanly deregistered itself, but tasks the balancer routed to it may still sit
        # in its queue: find those queues too (from them only routed tasks, with requirements, move; a task
        # pinned to a node that is not up yet stays for it).
        queue_prefix = self.keys.node_queue("")
        found = texts([k async for k in self.redis.scan_iter(match=glob_escape(queue_prefix) + "*", count=1000)])
        queued_for = {k[len(queue_prefix) :] for k in found}
        for node_id in (known | queued_for) - online:
            queue = self.engine.queue_for(0, node_id)
            queued = await self.engine.queued_jobs(queue)
            for start in range(0, len(queued), UNSERVED_CHUNK):
                jobs = queued[start : start + UNSERVED_CHUNK]
                # One read for the chunk. The job id is the task id, or the task id plus ".<suffix>" (task ids may
                # contain dots): both are read, and the record whose engine job it is wins.
                records = await self.get_tasks([i for job, _ in jobs for i in (job, job.rpartition(".")[0] or job)])
                for index, (job, handle) in enumerate(jobs):
                    message = next((m for m in records[2 * index : 2 * index + 2]
                                    if m is not None and m.engine_job_id == job), None)
                    if message is None or message.status not in (TaskStatus.PENDING, TaskStatus.RETRYING,
                                                                 TaskStatus.SCHEDULED):
                        continue
                    if node_id not in known and not message.requirements:
                        continue
                    if not await self.engine.unqueue(queue, job, handle):
                        continue
                    message.engine_job_id = f"{message.task_id}.n{uuid.uuid4().hex[:8]}"
                    await self.dispatch(message)
                    counts["rerouted"] += 1
        return counts
