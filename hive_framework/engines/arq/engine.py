"""The ``arq`` engine: ARQ's sorted-set queues and job machinery, selected with ``HIVE_BROKER=arq``.

A task's job is an ARQ job calling one function (``hive.run``) with the task id. Priorities are kept two
ways: ``high_priority``-class tasks go to the high queue, which spores drain first, and within a queue a
higher level gets a lower ARQ score, so it is read first. ARQ's own keys live under ``{prefix}:arq:``
(:mod:`.keyspace`); job data is JSON, never pickle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from arq.jobs import serialize_job
from redis.exceptions import NoScriptError, WatchError

from ...broker.engine import Delivery, Engine, Fence, Guard, Previous, TaskRunner, fenced, guard_parts
from ...broker.records import add_to_pipeline, load_runner, status_commands
from ...models import HIGH_PRIORITY_LEVEL, TaskMessage
from ...redisutil import raise_if_cancelling, texts
from .keyspace import ArqKeys
from .serial import job_serializer
from .worker import PRIORITY_STEP_MS, RUN_FUNCTION, ArqWorker, delayed_member

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

#: The number of jobs on one class's queues of every task type (KEYS[1] the types set, ARGV[1] the base name).
_DEPTH = """
local n = 0
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + redis.call('ZCARD', ARGV[1] .. ':type:' .. t) end
return n
"""


class ArqEngine(Engine):
    """ARQ behind :class:`~hive_framework.broker.MessageBroker`."""

    name = "arq"

    @property
    def arq_keys(self) -> ArqKeys:
        return ArqKeys(self.key())

    @property
    def types(self) -> str:
        """Set of every task type that ever had a job queued (its queues exist)."""
        return self.key("types")

    def type_queue(self, high: bool, task_type: str) -> str:
        """One class's queue of one task type: ``{high or background queue}:type:{task type}``."""
        return f"{self.keys.high_queue if high else self.keys.background_queue}:type:{task_type}"

    def queue_for(self, level: int, node: str | None, task_type: str = "") -> str:
        if node:
            return self.keys.node_queue(node)
        if not task_type:
            raise ValueError("a shared queue needs the task type")
        return self.type_queue(level >= HIGH_PRIORITY_LEVEL, task_type)

    def queues(self, task_types: Sequence[str] = ()) -> list[str]:
        """The high queue of each type, then the background queue of each."""
        return [self.type_queue(high, t) for high in (True, False) for t in task_types]

    def enqueue_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        now_ms = int(time.time() * 1000)
        job = serialize_job(RUN_FUNCTION, (message.task_id,), {}, None, now_ms, serializer=job_serializer)
        ttl_ms = int(max(self.config.result_ttl, 86400) * 1000)
        pipe.psetex(self.arq_keys.job(message.engine_job_id), ttl_ms, job)
        pipe.zadd(message.queue, {message.engine_job_id: now_ms - message.priority * PRIORITY_STEP_MS})
        pipe.sadd(self.types, message.task_type)

    @property
    def delayed(self) -> str:
        """Sorted set of delayed tasks' jobs not due yet, scored by due time in ms (members: :func:`delayed_member`)."""
        return self.key("delayed")

    def schedule_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Write the job now and add it to the delayed set; a spore's poll moves it onto its queue, scored by its
        priority, once due (one ZREM decides which spore moves it, so it moves once)."""
        assert message.eta is not None
        due_ms = int(message.eta.timestamp() * 1000)
        job = serialize_job(RUN_FUNCTION, (message.task_id,), {}, None, int(time.time() * 1000),
                            serializer=job_serializer)
        ttl_ms = int(max(self.config.result_ttl, 86400) * 1000) + max(due_ms - int(time.time() * 1000), 0)
        pipe.psetex(self.arq_keys.job(message.engine_job_id), ttl_ms, job)
        pipe.zadd(self.delayed, {delayed_member(message): due_ms})
        pipe.sadd(self.types, message.task_type)

    def drop_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Take the job off every queue it may be on (and off the delayed set), and delete its ARQ keys."""
        job = message.engine_job_id
        for queue in {message.queue, *self.queues([message.task_type])} - {""}:
            pipe.zrem(queue, job)
        if message.queue:
            pipe.zrem(self.delayed, delayed_member(message))
        keys = self.arq_keys
        pipe.delete(keys.job(job), keys.retry(job), keys.in_progress(job))

    def depth_ops(self, pipe: Pipeline) -> None:
        for base in (self.keys.high_queue, self.keys.background_queue):
            pipe.eval(_DEPTH, 1, self.types, base)

    def queue_depth_ops(self, pipe: Pipeline, queue: str) -> None:
        pipe.zcard(queue)

    async def watch_taken(self, pipe: Pipeline, message: TaskMessage) -> bool:
        """A spore holds the job when its in-progress key exists (watched: a take meanwhile fails the move)."""
        in_progress = self.arq_keys.in_progress(message.engine_job_id)
        await pipe.watch(in_progress)
        return bool(await pipe.exists(in_progress))

    async def queued_jobs(self, queue: str) -> list[tuple[str, Any]]:
        return [(job, job) for job in texts(await self.redis.zrange(queue, 0, -1))]

    async def unqueue(self, queue: str, job: str, handle: Any) -> bool:
        if not await self.redis.zrem(queue, job):
            return False
        await self.redis.delete(self.arq_keys.job(job))
        return True

    async def record(self, items: Sequence[tuple[TaskMessage, Previous, Guard]]) -> list[list[str] | None]:
        """Check the cancellation markers and the fences, then save the others in one transaction (ARQ settles
        its own jobs). The markers and the fenced records are watched, so a cancel or a newer attempt landing
        between the check and the save makes the transaction start over, never be overwritten."""
        if not items:
            return []
        fences = [guard_parts(guard)[1] for _, _, guard in items]
        watched = [self.keys.cancelled(m.task_id) for m, _, _ in items]
        watched += [self.keys.task(m.task_id) for (m, _, _), f in zip(items, fences, strict=True) if f is not None]
        while True:
            raise_if_cancelling()
            try:
                outcomes, fenced_out = await self._record_watched(items, fences, watched)
            except WatchError:
                # A watched key changed, or the connection died while watching (a pooled connection left over
                # from before a Redis restart): redis-py says start the transaction over. A Redis still away
                # then fails the next WATCH with a ConnectionError, which the caller handles as an outage.
                continue
            except NoScriptError:
                # Redis lacks the status runner (first save, or scripts lost in a restart or failover). Every
                # write of the transaction is a call of it, and they all failed alike: nothing was written.
                await load_runner(self.redis)
                continue
            # Logged once the decision is final: a pass that started over decided nothing.
            for message in fenced_out:
                fenced(message)
            return outcomes

    async def _record_watched(
        self, items: Sequence[tuple[TaskMessage, Previous, Guard]], fences: list[Fence | None], watched: list[str]
    ) -> tuple[list[list[str] | None], list[TaskMessage]]:
        """One pass of :meth:`record`: the outcomes, and the items not saved because their fence no longer held
        (logged by the caller only if this pass is the one that stands)."""
        fenced_out: list[TaskMessage] = []
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(*watched)
            refused: list[bool] = []
            landed: list[bool] = []
            for (message, _, _), fence in zip(items, fences, strict=True):
                gone = bool(await pipe.exists(self.keys.cancelled(message.task_id)))
                stored = await pipe.get(self.keys.task(message.task_id)) if fence is not None and not gone else None
                already = False
                if fence is not None and not gone and not fence.holds(stored):
                    # The record shows what this very save of a spore's attempt writes (its node, attempt and
                    # job): it landed before its reply was lost (a reset), and this is it sent again. Not
                    # fenced: it stands, and writing it twice would only repeat it.
                    already = bool(message.assigned_node) and Fence.stored(message).holds(stored)
                    if not already:
                        fenced_out.append(message)
                        gone = True
                refused.append(gone)
                landed.append(already)
            pipe.multi()
            ends: list[int] = []  # where each saved item's SMEMBERS reply lands (-1: not saved)
            position = -1
            for (message, previous, _), gone, already in zip(items, refused, landed, strict=True):
                if gone:
                    ends.append(-1)
                    continue
                if already:
                    pipe.smembers(self.keys.dependents(message.task_id))
                    position += 1
                    ends.append(position)
                    continue
                # one script call, whose reply is the last command's: the dependents
                commands = status_commands(self.keys, self.config, message, previous)
                add_to_pipeline(pipe, [*commands, ("SMEMBERS", self.keys.dependents(message.task_id))], by_sha=True)
                position += 1
                ends.append(position)
            replies = await pipe.execute() if position >= 0 else []
        outcomes = [
            None if end < 0 else (texts(replies[end]) if message.is_terminal else [])
            for (message, _, _), end in zip(items, ends, strict=True)
        ]
        return outcomes, fenced_out

    async def settle(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing: ARQ finishes its own jobs when the job function returns."""

    def create_worker(self, runner: TaskRunner) -> ArqWorker:
        return ArqWorker(self, runner)

