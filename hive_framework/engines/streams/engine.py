"""The ``streams`` engine: Redis Streams with one consumer group, strict priority, leases by idle time.

One stream per priority level (the seed's queue names carry the top level of each class: ``venom:tasks:high``
for ``high_priority``, ``venom:tasks:background`` for ``background``; other levels add ``:<level>``), plus
one per node for pinned tasks. Its own keys: ``{prefix}:streams:entries`` (job id -> entry id, so a queued
job can be dropped) and ``{prefix}:streams:delayed`` (retries waiting out their backoff and delayed tasks not due
yet).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...broker.engine import Delivery, Engine, Fence, Guard, Previous, TaskRunner, fenced, guard_parts
from ...broker.records import Command, flatten, status_commands
from ...models import HIGH_PRIORITY_LEVEL, TaskMessage, TaskStatus
from ...policies import retry_delay
from ...redisutil import text, texts
from . import scripts
from .worker import GROUP, StreamWorker

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

#: An entry carries a copy of its task record while its stream holds fewer entries than this: an idle spore's
#: blocking read then brings the record, and the spore begins the task one round trip sooner.
CARRY_BELOW = 64
#: Largest record an entry carries, in bytes.
CARRY_MAX_BYTES = 16_384


def delayed_member(stream: str, task_id: str, job_id: str) -> str:
    """A delayed retry's member: a JSON array, so task ids may hold any character (``due_retries.lua``)."""
    return json.dumps([stream, task_id, job_id], ensure_ascii=False, separators=(",", ":"))


class StreamsEngine(Engine):
    """Redis Streams behind :class:`~hive_framework.broker.MessageBroker`; ``HIVE_BROKER=streams``."""

    name = "streams"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._save_queue: list[tuple[tuple[list[str], list[Any]], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Future[None]] = set()

    # --- layout --------------------------------------------------------------------------------------

    @property
    def entries(self) -> str:
        """Hash job id -> stream entry id of every queued job."""
        return self.key("entries")

    @property
    def delayed(self) -> str:
        """Sorted set of retries waiting out their backoff and scheduled tasks, scored by due time in ms."""
        return self.key("delayed")

    @property
    def types(self) -> str:
        """Set of every task type that ever had a job queued (its streams exist)."""
        return self.key("types")

    def level_stream(self, level: int) -> str:
        """The base name of one priority level: the seed's name for the top of each class, ``name:<level>``
        else. Jobs live on one stream per level and task type under it (:meth:`type_stream`)."""
        if level >= HIGH_PRIORITY_LEVEL:
            return self.keys.high_queue if level == 10 else f"{self.keys.high_queue}:{level}"
        return self.keys.background_queue if level == 0 else f"{self.keys.background_queue}:{level}"

    def type_stream(self, level: int, task_type: str) -> str:
        """The stream of one priority level and one task type: ``{level stream}:type:{task type}``."""
        return f"{self.level_stream(level)}:type:{task_type}"

    def queues(self, task_types: Sequence[str] = ()) -> list[str]:
        """Every level's stream of each of ``task_types``, highest level first (types in the given order)."""
        return [self.type_stream(level, t) for level in range(10, -1, -1) for t in task_types]

    def consume_streams(self, node_id: str, task_types: Sequence[str]) -> list[str]:
        return [self.keys.node_queue(node_id), *self.queues(sorted(task_types))]

    def queue_for(self, level: int, node: str | None, task_type: str = "") -> str:
        if node:
            return self.keys.node_queue(node)
        if not task_type:
            raise ValueError("a shared queue needs the task type")
        return self.type_stream(level, task_type)

    # --- producer side -------------------------------------------------------------------------------

    def enqueue_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Queue the job; its entry carries a copy of the record while the stream is short (``add.lua``)."""
        scripts.ADD.queue_whole(
            pipe, [message.queue, self.entries, self.keys.task(message.task_id)],
            [message.task_id, message.engine_job_id, CARRY_BELOW, CARRY_MAX_BYTES],
        )
        pipe.sadd(self.types, message.task_type)

    def schedule_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Add the job to the delayed set, scored by when it is due: the spores' upkeep moves it onto its stream
        then (``due_retries.lua``, the retries' path: one ZREM decides which spore moves it, so it moves once)."""
        assert message.eta is not None
        member = delayed_member(message.queue, message.task_id, message.engine_job_id)
        pipe.zadd(self.delayed, {member: message.eta.timestamp() * 1000})
        pipe.sadd(self.types, message.task_type)

    def drop_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Delete the job's entry from its stream if no spore has taken it yet (one taken is skipped by its
        spore, as the job id no longer matches), and its member of the delayed set (a scheduled task or a
        retry waiting out its backoff)."""
        if message.queue:
            scripts.DROP.queue_whole(pipe, [message.queue, self.entries], [message.engine_job_id])
            pipe.zrem(self.delayed, delayed_member(message.queue, message.task_id, message.engine_job_id))

    def depth_ops(self, pipe: Pipeline) -> None:
        levels = [self.level_stream(level) for level in range(10, -1, -1)]
        high = [s for s in levels if s.startswith(self.keys.high_queue)]
        low = [s for s in levels if s not in high]
        scripts.DEPTH.queue_whole(pipe, [self.types], high)
        scripts.DEPTH.queue_whole(pipe, [self.types], low)

    def queue_depth_ops(self, pipe: Pipeline, queue: str) -> None:
        pipe.xlen(queue)

    async def queued_jobs(self, queue: str) -> list[tuple[str, Any]]:
        jobs = []
        for entry_id, fields in await self.redis.xrange(queue):
            job = fields.get(b"j", fields.get("j"))
            if job is not None:
                jobs.append((text(job), entry_id))
        return jobs

    async def unqueue(self, queue: str, job: str, handle: Any) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xdel(queue, handle)
            pipe.hdel(self.entries, job)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    # --- consumer side -------------------------------------------------------------------------------

    def settle_commands(self, delivery: Delivery) -> list[Command]:
        """Acknowledge and delete a delivered entry, and forget its job id."""
        stream, entry_id = delivery.receipt
        return [("XACK", stream, GROUP, entry_id), ("XDEL", stream, entry_id), ("HDEL", self.entries, delivery.job_id)]

    async def settle(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                for command in self.settle_commands(delivery):
                    pipe.execute_command(*command)
            await pipe.execute()

    def _guarded_args(self, message: TaskMessage, previous: Previous, guard: Guard) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the guarded call that saves ``message`` under the guard's fence and settles its
        delivery."""
        delivery, fence = guard_parts(guard)
        commands = status_commands(self.keys, self.config, message, previous)
        if delivery is not None:
            stream = delivery.receipt[0]
            commands += self.settle_commands(delivery)
            if message.status == TaskStatus.RETRYING:
                due_ms = (time.time() + retry_delay(self.config, message.attempt)) * 1000
                member = delayed_member(message.queue or stream, message.task_id, message.engine_job_id)
                commands.append(("ZADD", self.delayed, repr(due_ms), member))
            elif message.status == TaskStatus.PENDING:
                commands.append(("HIVE.REQUEUE", stream, self.entries, message.task_id, message.engine_job_id))
            elif message.status == TaskStatus.SCHEDULED and message.eta is not None:
                # Delivered before it was due (clocks apart): back to the delayed set until it is.
                member = delayed_member(message.queue or stream, message.task_id, message.engine_job_id)
                commands.append(("ZADD", self.delayed, repr(message.eta.timestamp() * 1000), member))
        if message.is_terminal:
            commands.append(("SMEMBERS", self.keys.dependents(message.task_id)))
        argv: list[Any] = [*fence.argv(), *Fence.stored(message).argv()] if fence is not None else [""] * 8
        return [self.keys.cancelled(message.task_id), self.keys.task(message.task_id)], [*argv, *flatten(commands)]

    async def record(self, items: Sequence[tuple[TaskMessage, Previous, Guard]]) -> list[list[str] | None]:
        """One guarded Lua call per item; items recorded in the same event-loop turn (tasks finishing together)
        share one pipelined round trip."""
        loop = asyncio.get_running_loop()
        futures = []
        for message, previous, guard in items:
            future: asyncio.Future[Any] = loop.create_future()
            if not self._save_queue:
                loop.call_soon(self._start_flush)
            self._save_queue.append((self._guarded_args(message, previous, guard), future))
            futures.append(future)
        replies = await asyncio.gather(*futures)
        out: list[list[str] | None] = []
        for (message, _, _), reply in zip(items, replies, strict=True):
            if reply == b"fenced" or reply == "fenced":
                fenced(message)
                out.append(None)
            elif not reply:
                out.append(None)
            elif message.is_terminal and isinstance(reply[0], list):
                out.append(texts(reply[0]))
            else:
                out.append([])
        return out

    def _start_flush(self) -> None:
        batch, self._save_queue = self._save_queue, []
        if batch:
            flush = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[tuple[list[str], list[Any]], asyncio.Future[Any]]]) -> None:
        try:
            # One script call for the whole batch: one reply to read, not one per task.
            if len(batch) == 1:
                (keys, argv), _ = batch[0]
                replies: list[Any] = [await scripts.GUARDED(self.redis, keys, argv)]
            else:
                all_keys: list[str] = []
                all_argv: list[Any] = [len(batch)]
                for (keys, argv), _ in batch:
                    all_keys += keys
                    all_argv += [len(argv), *argv]
                replies = await scripts.GUARDED_BATCH(self.redis, all_keys, all_argv)
                replies = [False if reply == 0 else reply for reply in replies]
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise

    def create_worker(self, runner: TaskRunner) -> StreamWorker:
        return StreamWorker(self, runner)
