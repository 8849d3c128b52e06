"""The ``streams`` broker: the same guarantees as the ARQ one, on Redis Streams with consumer groups.

One stream per priority level (the seed's queue names carry the top level of each class: ``venom:tasks:high``
for ``high_priority``, ``venom:tasks:background`` for ``background``; other levels add ``:<level>``), plus
one per node for pinned tasks. A spore claims work with one Lua call that reads the streams in priority
order (strict priority, one round trip for a whole batch), blocks on all of them when there is none,
settles a finished task, its ack and its retry schedule in one guarded Lua call, and takes over the
entries of dead spores with ``XAUTOCLAIM`` once their lease has lapsed. JSON only, at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, ResponseError

from ..hookspecs import hookimpl
from ..models import HIGH_PRIORITY_LEVEL, TaskMessage, TaskStatus
from .broker import MessageBroker, _awaited, _text

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..spore import Spore

logger = logging.getLogger(__name__)

GROUP = "hive"
SEP = "\x1f"

# Read up to ARGV[3] new entries from the streams in KEYS, in order: the first stream is drained first.
CLAIM_SCRIPT = """
local want = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if want <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
  if got then
    for _, entry in ipairs(got[1][2]) do
      table.insert(out, {key, entry[1], entry[2]})
      want = want - 1
    end
  end
end
return out
"""

# Run the commands encoded in ARGV (count, command, args...) unless KEYS[1] exists; return the last reply.
# HIVE.REQUEUE is ADD_SCRIPT inlined (a script cannot call another).
GUARDED_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local i = 1
local reply = true
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if ARGV[i + 1] == 'HIVE.REQUEUE' then
    -- stream, entries hash, task id, job id: append the entry and remember its id
    local id = redis.call('XADD', ARGV[i + 2], '*', 't', ARGV[i + 4], 'j', ARGV[i + 5])
    reply = redis.call('HSET', ARGV[i + 3], ARGV[i + 5], id)
  else
    reply = redis.call(unpack(ARGV, i + 1, i + n))
  end
  i = i + n + 1
end
return {reply}
"""

# Move due retries (member: stream SEP task SEP job) back onto their streams; return the next due time.
DELAYED_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local stream, task, job = string.match(member, '^(.-)\\031(.-)\\031(.*)$')
    local id = redis.call('XADD', stream, '*', 't', task, 'j', job)
    redis.call('HSET', KEYS[2], job, id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return nxt[2] or false
"""

# Append a task's entry to its stream and remember the entry id by job id (so it can be dropped later).
ADD_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'j', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], id)
return id
"""

# Drop a job's entry from its stream, if it is still there.
DROP_SCRIPT = """
local id = redis.call('HGET', KEYS[2], ARGV[1])
if id then
  redis.call('XDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return id
"""

XLEN_SUM_SCRIPT = """
local n = 0
for _, key in ipairs(KEYS) do n = n + redis.call('XLEN', key) end
return n
"""


class _Recorder:
    """Collects the pipeline calls of :meth:`MessageBroker._status_ops` as raw commands for a Lua call."""

    def __init__(self) -> None:
        self.commands: list[list[Any]] = []

    def _add(self, *args: Any) -> None:
        self.commands.append([a.decode() if isinstance(a, bytes) else a for a in args])

    def set(self, key: str, value: Any) -> None:
        self._add("SET", key, value)

    def psetex(self, key: str, ms: int, value: Any) -> None:
        self._add("PSETEX", key, ms, value)

    def pexpire(self, key: str, ms: int) -> None:
        self._add("PEXPIRE", key, ms)

    def rpush(self, key: str, *values: Any) -> None:
        self._add("RPUSH", key, *values)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        flat: list[Any] = []
        for member, score in mapping.items():
            flat += [repr(float(score)), member]
        self._add("ZADD", key, *flat)

    def zrem(self, key: str, *members: Any) -> None:
        self._add("ZREM", key, *members)

    def xadd(self, key: str, fields: dict[str, Any]) -> None:
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        self._add("XADD", key, "*", *flat)

    def smembers(self, key: str) -> None:
        self._add("SMEMBERS", key)

    def argv(self) -> list[Any]:
        out: list[Any] = []
        for command in self.commands:
            out += [len(command), *command]
        return out


class StreamsBroker(MessageBroker):
    """:class:`MessageBroker` on Redis Streams; selected with ``HIVE_BROKER=streams``."""

    def __init__(self, kernel: Kernel | None = None, *, redis: Any = None) -> None:
        super().__init__(kernel, redis=redis)
        self._save_queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Future[None]] = set()

    # --- layout --------------------------------------------------------------------------------------

    def level_stream(self, level: int) -> str:
        """The stream of one priority level: the seed's name for the top of each class, ``name:<level>`` else."""
        if level >= HIGH_PRIORITY_LEVEL:
            return self.keys.high_queue if level == 10 else f"{self.keys.high_queue}:{level}"
        return self.keys.background_queue if level == 0 else f"{self.keys.background_queue}:{level}"

    def level_streams(self) -> list[str]:
        """Every level's stream, highest priority first."""
        return [self.level_stream(level) for level in range(10, -1, -1)]

    def consume_streams(self, node_id: str) -> list[str]:
        return [self.keys.node_queue(node_id), *self.level_streams()]

    def _queue_for(self, level: int, node: str | None) -> str:
        return self.keys.node_queue(node) if node else self.level_stream(level)

    # --- engine ops ----------------------------------------------------------------------------------

    def _queue_ops(self, pipe: Any, message: TaskMessage, previous: TaskStatus | str | None = "unknown") -> None:
        self._status_ops(pipe, message, previous)
        pipe.eval(ADD_SCRIPT, 2, message.queue, self.keys.stream_entries, message.task_id, message.engine_job_id)

    def _drop_ops(self, pipe: Any, message: TaskMessage) -> None:
        """Delete the job's entry from its stream if no spore has taken it yet (one taken is skipped by its
        spore, as the job id no longer matches)."""
        if message.queue:
            pipe.eval(DROP_SCRIPT, 2, message.queue, self.keys.stream_entries, message.engine_job_id)

    def _depth_ops(self, pipe: Any) -> None:
        high = [s for s in self.level_streams() if s.startswith(self.keys.high_queue)]
        low = [s for s in self.level_streams() if s not in high]
        pipe.eval(XLEN_SUM_SCRIPT, len(high), *high)
        pipe.eval(XLEN_SUM_SCRIPT, len(low), *low)

    async def settle(self, ack: Any) -> None:
        if ack is None:
            return
        stream, entry_id, job = ack
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.hdel(self.keys.stream_entries, job)
            await pipe.execute()

    def _guarded_args(self, message: TaskMessage, previous: TaskStatus | str | None, ack: Any) -> list[Any]:
        """KEYS and ARGV of the guarded Lua call that saves ``message`` (and settles ``ack``)."""
        from ..spore import retry_delay

        ops = _Recorder()
        self._status_ops(ops, message, previous)
        if ack is not None:
            stream, entry_id, job = ack
            ops._add("XACK", stream, GROUP, entry_id)
            ops._add("XDEL", stream, entry_id)
            ops._add("HDEL", self.keys.stream_entries, job)
            if message.status == TaskStatus.RETRYING:
                due_ms = (time.time() + retry_delay(self.config, message.attempt)) * 1000
                member = SEP.join((message.queue or stream, message.task_id, message.engine_job_id))
                ops.zadd(self.keys.delayed, {member: due_ms})
            elif message.status == TaskStatus.PENDING:
                ops._add("HIVE.REQUEUE", stream, self.keys.stream_entries, message.task_id, message.engine_job_id)
        if message.is_terminal:
            ops.smembers(self.keys.dependents(message.task_id))
        return [1, self.keys.cancelled(message.task_id), *ops.argv()]

    async def _script(self, client: Any, source: str, args: Sequence[Any]) -> Any:
        """EVALSHA, falling back to EVAL (which caches the script) the first time a server lacks it."""
        try:
            return await _awaited(client.evalsha(_sha(source), *args))
        except NoScriptError:
            return await _awaited(client.eval(source, *args))

    async def save_unless_cancelled(
        self, message: TaskMessage, *, previous: TaskStatus | str | None = "unknown", ack: Any = None
    ) -> bool:
        """Save, settle the stream entry and schedule a retry in one Lua call, skipped if the task was cancelled.

        Saves requested in the same event-loop turn (tasks finishing together) share one pipelined round trip.
        """
        args = self._guarded_args(message, previous, ack)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._save_queue.append((args, future))
        if len(self._save_queue) == 1:
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await self._after_save(message, await future)

    def _start_flush(self) -> None:
        batch, self._save_queue = self._save_queue, []
        if batch:
            flush = asyncio.ensure_future(self._flush_saves(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush_saves(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        try:
            await self.load_scripts()
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.evalsha(_sha(GUARDED_SCRIPT), *args)
                replies = await pipe.execute(raise_on_error=False)
            for (args, future), reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    reply = await self._script(self.redis, GUARDED_SCRIPT, args)
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

    async def _after_save(self, message: TaskMessage, reply: Any) -> bool:
        if not reply:
            logger.info("task %s was cancelled while it ran; its outcome is dropped", message.task_id)
            return False
        if message.is_terminal and isinstance(reply[0], list) and reply[0]:
            await self._release_dependents(message, dependents=_text(reply[0]))
        return True

    async def save_many(self, items: Sequence[tuple[TaskMessage, TaskStatus | str | None]]) -> list[bool]:
        """Save several tasks (each unless cancelled) in one pipelined round trip; a flag per task."""
        if not items:
            return []
        await self.load_scripts()
        async with self.redis.pipeline(transaction=False) as pipe:
            for message, previous in items:
                pipe.evalsha(_sha(GUARDED_SCRIPT), *self._guarded_args(message, previous, None))
            replies = await pipe.execute()
        return [await self._after_save(m, r) for (m, _), r in zip(items, replies, strict=True)]

    async def settle_many(self, acks: Sequence[Any]) -> None:
        if not acks:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, entry_id, job in acks:
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                pipe.hdel(self.keys.stream_entries, job)
            await pipe.execute()

    async def load_scripts(self) -> None:
        """Make sure the server has every script (``SCRIPT LOAD`` is idempotent); needed before EVALSHA in pipelines."""
        if getattr(self, "_scripts_loaded", None) is self._redis:
            return
        for source in (CLAIM_SCRIPT, GUARDED_SCRIPT, DELAYED_SCRIPT, ADD_SCRIPT, XLEN_SUM_SCRIPT):
            await _awaited(self.redis.script_load(source))
        self._scripts_loaded = self._redis

    async def _taken(self, pipe: Any, message: TaskMessage) -> bool:
        """Never blocks a move: an entry a spore took is skipped by it, as its job id no longer matches."""
        return False

    async def queued_jobs(self, queue: str) -> list[tuple[str, Any]]:
        entries = await self.redis.xrange(queue)
        jobs = []
        for entry_id, fields in entries:
            job = fields.get(b"j", fields.get("j"))
            if job is not None:
                jobs.append((job.decode() if isinstance(job, bytes) else str(job), entry_id))
        return jobs

    async def _unqueue_job(self, queue: str, job: str, handle: Any) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xdel(queue, handle)
            pipe.hdel(self.keys.stream_entries, job)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    def create_worker(self, spore: Spore) -> StreamWorker:
        return StreamWorker(self, spore)


class StreamWorker:
    """Feeds one spore from its streams: batched strict-priority claims, blocking reads, leases, retries."""

    def __init__(self, broker: StreamsBroker, spore: Spore) -> None:
        self.broker = broker
        self.spore = spore
        self.redis = broker.redis
        self.config = broker.config
        self.capacity = spore.concurrency
        self.queues = broker.consume_streams(spore.node_id)
        self.consumer = f"{spore.node_id}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._allow = True
        self._reader: asyncio.Task[Any] | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, tuple[str, Any]] = {}
        self._wake = asyncio.Event()
        self._retry_scheduled = asyncio.Event()
        self.lease_ms = int(self.config.lease_seconds * 1000)

    @property
    def running(self) -> int:
        return len(self.tasks)

    @property
    def allow_pick_jobs(self) -> bool:
        return self._allow

    @allow_pick_jobs.setter
    def allow_pick_jobs(self, allow: bool) -> None:
        """Pausing also abandons a blocking read, so no new entry is delivered to a paused spore."""
        self._allow = allow
        if not allow and self._reader is not None:
            self._reader.cancel()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _ensure_groups(self) -> None:
        for stream in self.queues:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def main(self) -> None:
        await self._ensure_groups()
        upkeep = asyncio.create_task(self._upkeep(), name="hive-streams-upkeep")
        try:
            while True:
                free = self.capacity - len(self.tasks)
                if not self.allow_pick_jobs or free <= 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    continue
                entries = await self._claim(free)
                if not entries:
                    self._reader = asyncio.create_task(self._block())
                    try:
                        entries = await self._reader
                    except asyncio.CancelledError:
                        if not self._reader.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                            raise
                        continue  # paused while waiting
                    finally:
                        self._reader = None
                if entries and not self.allow_pick_jobs:
                    await self._hand_back(entries)
                elif entries:
                    await self._start(entries)
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep

    async def _claim(self, count: int) -> list[tuple[str, Any, dict[Any, Any]]]:
        raw: Any = await self.broker._script(
            self.redis, CLAIM_SCRIPT, [len(self.queues), *self.queues, GROUP, self.consumer, str(count)]
        )
        return [(_str(stream), entry_id, _fields(fields)) for stream, entry_id, fields in raw or []]

    async def _block(self) -> list[tuple[str, Any, dict[Any, Any]]]:
        """Wait up to a second for new entries on any stream (one per stream at most), highest priority first."""
        reply = await self.redis.xreadgroup(
            GROUP, self.consumer, {s: ">" for s in self.queues}, count=1, block=1000
        )
        order = {s: i for i, s in enumerate(self.queues)}
        entries = [
            (_str(stream), entry_id, _fields(fields))
            for stream, items in (reply or [])
            for entry_id, fields in items
        ]
        return sorted(entries, key=lambda e: order.get(e[0], len(order)))

    async def _hand_back(self, entries: Sequence[tuple[str, Any, dict[Any, Any]]]) -> None:
        """Return entries read just as the spore paused to their streams, for other spores."""
        keys = self.broker.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for stream, entry_id, fields in entries:
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                pipe.eval(ADD_SCRIPT, 2, stream, keys.stream_entries, fields.get("t", ""), fields.get("j", ""))
            await pipe.execute()

    async def _start(self, entries: Sequence[tuple[str, Any, dict[Any, Any]]]) -> None:
        """Begin every taken entry: running states saved in one round trip, skipped entries settled in one."""
        task_ids = [str(fields.get("t", "")) for _, _, fields in entries]
        messages = await self.broker.get_tasks(task_ids)
        runs: list[tuple[str, str, TaskMessage, Any]] = []
        previous_of: list[TaskStatus | None] = []
        skips: list[Any] = []
        for (stream, entry_id, fields), message in zip(entries, messages, strict=True):
            job_id = str(fields.get("j", ""))
            ack = (stream, entry_id, job_id)
            previous = message.status if message is not None else None
            decision = self.spore.begin_attempt(message, job_id)
            if decision == "skip" or message is None:
                skips.append(ack)
            elif decision == "exhausted":
                await self.broker.save_unless_cancelled(message, previous=previous, ack=ack)
            else:
                runs.append((f"{stream}{SEP}{_str(entry_id)}", job_id, message, ack))
                previous_of.append(previous)
        await self.broker.settle_many(skips)
        saved = await self.broker.save_many([(run[2], prev) for run, prev in zip(runs, previous_of, strict=True)])
        for (handle, job_id, message, ack), ok in zip(runs, saved, strict=True):
            if not ok:
                await self.broker.settle(ack)
                continue
            self._inflight[handle] = (ack[0], ack[1])
            self.tasks[handle] = asyncio.create_task(self._run(handle, message.task_id, job_id, message, ack))

    async def _run(self, handle: str, task_id: str, job: str, message: TaskMessage | None, ack: Any) -> None:
        try:
            retry_in = await self.spore.run_task(task_id, job, message=message, ack=ack, started=True)
            if retry_in is not None:
                self._retry_scheduled.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("task %s: the spore could not record its outcome; its entry stays pending", task_id)
        finally:
            self.tasks.pop(handle, None)
            self._inflight.pop(handle, None)
            self._wake.set()

    async def close(self) -> None:
        """Leave the consumer groups (so they do not collect one dead consumer per restart), where nothing
        is pending for this spore; anything still pending stays for another spore to take over."""
        for stream in self.queues:
            pending = await self.redis.xpending_range(stream, GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                await self.redis.xgroup_delconsumer(stream, GROUP, self.consumer)

    async def refresh_leases(self) -> None:
        """Reset the idle time of every entry this spore holds, so no other spore takes it over."""
        held = list(self._inflight.values())
        if not held:
            return
        by_stream: dict[str, list[Any]] = {}
        for stream, entry_id in held:
            by_stream.setdefault(stream, []).append(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xclaim(stream, GROUP, self.consumer, 0, ids, justid=True)
            await pipe.execute()

    async def _upkeep(self) -> None:
        """Move due retries back to their streams and take over entries whose spore stopped renewing them."""
        last_claim = 0.0
        while True:
            try:
                next_due: Any = await self.broker._script(
                    self.redis, DELAYED_SCRIPT,
                    [2, self.broker.keys.delayed, self.broker.keys.stream_entries, str(int(time.time() * 1000)), "500"],
                )
                now = time.monotonic()
                if now - last_claim >= self.config.lease_seconds / 2:
                    last_claim = now
                    await self._take_over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("stream upkeep failed: %s", exc)
                next_due = None
            wait = self.config.lease_seconds / 2
            if next_due:
                wait = min(wait, max(float(next_due) / 1000 - time.time(), 0.0))
            self._retry_scheduled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._retry_scheduled.wait()

    async def _take_over(self) -> None:
        if not self.allow_pick_jobs:
            return
        for stream in self.queues:
            free = self.capacity - len(self.tasks)
            if free <= 0:
                return
            reply = await self.redis.xautoclaim(stream, GROUP, self.consumer, self.lease_ms, "0-0", count=free)
            entries = [(stream, entry_id, _fields(fields)) for entry_id, fields in (reply[1] or []) if fields]
            if entries:
                logger.info("taking over %d task(s) of a lost spore from %s", len(entries), stream)
                await self._start(entries)


@functools.cache
def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(fields: Any) -> dict[str, Any]:
    if isinstance(fields, dict):
        return {_str(k): _str(v) for k, v in fields.items()}
    flat = list(fields or [])
    return {_str(flat[i]): _str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


@hookimpl(trylast=True)
def create_broker(kernel: Kernel) -> MessageBroker:
    return StreamsBroker(kernel)
