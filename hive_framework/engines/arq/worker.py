"""The ``arq`` engine's worker: ARQ's job machinery over several queues in strict priority order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from arq.connections import ArqRedis
from arq.worker import Retry, func
from arq.worker import Worker as _ArqWorker

from ...broker.engine import Delivery, TaskRunner, Worker
from ...broker.poison import digest, quarantine
from ...models import TaskMessage
from ...outage import Backoff, is_outage
from ...redisutil import raise_if_cancelling
from .keyspace import ArqKeyspaceRedis
from .serial import job_deserializer, job_serializer

if TYPE_CHECKING:
    from .engine import ArqEngine

logger = logging.getLogger(__name__)

#: The one ARQ function every hive job calls; its only argument is the task id.
RUN_FUNCTION = "hive.run"
#: ARQ's own job timeout; hive enforces each task's timeout itself, inside this.
_ENGINE_TIMEOUT_S = 7 * 86400
#: Score distance between two adjacent priority levels inside one queue (about 31 years in ms).
PRIORITY_STEP_MS = 10**12
#: Longest a due delayed task waits in the delayed set before a spore moves it onto its queue, in seconds.
DELAYED_CHECK_S = 0.5

#: Moves due delayed jobs onto their queues. KEYS[1] the delayed set (members JSON [queue, job id, score offset],
#: scored by due ms); ARGV[1] now in ms, ARGV[2] how many at most, ARGV[3..] the prefixes of the hive's queues
#: (a member naming another key is not followed). ZREM decides which caller moves a member, so it moves once;
#: the job lands at score due + offset (its priority's place). Returns {next due ms or false, {bad members}}.
_DUE_DELAYED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local bad = {}
for i = 1, #due, 2 do
  local member = due[i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local moved = false
    local ok, parts = pcall(cjson.decode, member)
    if ok and type(parts) == 'table' and type(parts[1]) == 'string' and type(parts[2]) == 'string'
        and parts[2] ~= '' and type(parts[3]) == 'number' then
      local ours = false
      for j = 3, #ARGV do
        if string.sub(parts[1], 1, string.len(ARGV[j])) == ARGV[j] then ours = true end
      end
      if ours then
        redis.call('ZADD', parts[1], tonumber(due[i + 1]) + parts[3], parts[2])
        moved = true
      end
    end
    if not moved then table.insert(bad, member) end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {nxt[2] or false, bad}
"""

#: Marks up to ARGV[3] jobs in progress here, in order, skipping those another spore holds or that are not due:
#: ARQ's WATCH, EXISTS, ZSCORE, MULTI per job, for a whole list in one round trip (taken one at a time, a spore far
#: from Redis started about one job per four round trips, whatever its slots). KEYS: per job its queue, then its
#: in-progress key; ARGV[1] now in ms, ARGV[2] the lease in ms, ARGV[3] how many at most, ARGV[4..] the job ids.
#: Returns per job its score, or '' when not taken.
_TAKE = """
local out, taken = {}, 0
for i = 4, #ARGV do
  local n = i - 3
  out[n] = ''
  if taken < tonumber(ARGV[3]) then
    local score = redis.call('ZSCORE', KEYS[2 * n - 1], ARGV[i])
    if score and tonumber(score) <= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2 * n]) == 0 then
      redis.call('PSETEX', KEYS[2 * n], ARGV[2], '1')
      out[n] = score
      taken = taken + 1
    end
  end
end
return out
"""


def delayed_member(message: TaskMessage) -> str:
    """A delayed job's member of the delayed set: JSON ``[queue, job id, score offset]``, where the offset puts
    the job at its priority's place in its queue (see ``_DUE_DELAYED``)."""
    return json.dumps([message.queue, message.engine_job_id, -message.priority * PRIORITY_STEP_MS],
                      ensure_ascii=False, separators=(",", ":"))


class _MultiQueueWorker(_ArqWorker):
    """ARQ's worker serving several queues: it starts a job from a lower queue only when no higher one has work.

    Only the parts of ARQ that assume a single queue are replaced: polling (:meth:`main`), starting and
    finishing jobs. Running a job (``run_job``: retries, cancellation, timeouts) is ARQ's own.
    """

    def __init__(self, engine: ArqEngine, runner: TaskRunner, groups: list[list[str]]) -> None:
        config = engine.config
        queues = [q for group in groups for q in group]
        self.arq_keys = engine.arq_keys
        super().__init__(
            functions=[func(self._run_job_function, name=RUN_FUNCTION, timeout=_ENGINE_TIMEOUT_S, max_tries=10**9)],
            queue_name=queues[0],
            # ARQ uses only plain Redis commands of its pool here; this client moves its keys under the prefix.
            redis_pool=cast(ArqRedis, ArqKeyspaceRedis.sharing(engine.redis, self.arq_keys)),
            handle_signals=False,
            max_jobs=runner.concurrency,
            job_timeout=_ENGINE_TIMEOUT_S,
            keep_result=0,
            poll_delay=config.poll_interval,
            max_tries=10**9,
            retry_jobs=True,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            log_results=False,
        )
        self.runner = runner
        self.queues = list(queues)
        #: Queues of equal rank (the high queues of every type the spore serves, then the background ones):
        #: a group's jobs start in score order across its queues, so priority holds across types.
        self.groups = groups
        self.in_progress_timeout_s = config.lease_seconds
        self._job_queue: dict[str, str] = {}
        self.wake_event = asyncio.Event()
        self.engine = engine
        self._due_delayed = engine.redis.register_script(_DUE_DELAYED)
        self._take = engine.redis.register_script(_TAKE)
        self._next_delayed_check = 0.0
        #: Jobs of scheduled tasks delivered before they were due (clocks apart): back to the delayed set.
        self._put_back: dict[str, TaskMessage] = {}
        self.limits = runner.limits
        #: The task type of each shared queue of a limited type; and of each job started from one, while it runs.
        self._limited = {q: t for t in runner.task_types if t in self.limits.limits for q in engine.queues([t])}
        self._job_type: dict[str, str] = {}

    async def _run_job_function(self, ctx: dict[str, Any], task_id: str) -> None:
        """The ARQ job function: begin and run the attempt; a retry becomes ARQ's ``Retry``."""
        delivery = Delivery(task_id=task_id, job_id=str(ctx.get("job_id", task_id)))
        try:
            attempts = await self.runner.begin([delivery])
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Redis went away while the attempt began: the job must stay queued (ARQ drops a job whose function
            # raised), so it runs again once Redis answers; the fence settles which attempt's outcome counts.
            logger.warning("task %s: could not begin (%s); its job runs again", task_id, exc)
            raise Retry(defer=Backoff(first=0.5).next_delay()) from exc
        for attempt in attempts:
            retry_in = await self.runner.run(attempt)
            if attempt.early and retry_in is not None:
                self._put_back[delivery.job_id] = attempt.message  # finish_job moves it to the delayed set
            if attempt.fenced:
                # ARQ would delete the job on return; the task's record no longer shows this attempt, and the
                # job may be what must run it again, so it stays (begun again, it runs or is skipped).
                retry_in = Backoff(first=0.5).next_delay()
            if retry_in is not None:
                raise Retry(defer=retry_in)

    async def main(self) -> None:
        """Poll the queues until cancelled; a freed slot wakes the loop at once."""
        self.ctx["redis"] = self.pool
        while True:
            raise_if_cancelling()
            await self._poll_queues()
            # Not asyncio.wait_for: on 3.11 it swallows a cancel that lands just as the wake event is set,
            # and this loop then never stops (a spore hung on shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await self.wake_event.wait()
            self.wake_event.clear()

    async def _move_due_delayed(self) -> None:
        """Move delayed jobs now due onto their queues (at most every :data:`DELAYED_CHECK_S`, sooner when one is
        due sooner); a member that names no queue of this hive is quarantined."""
        now = time.monotonic()
        if now < self._next_delayed_check:
            return
        keys = self.engine.keys
        next_due, bad = await self._due_delayed(
            keys=[self.engine.delayed],
            args=[int(time.time() * 1000), 500, keys.node_queue(""), keys.high_queue, keys.background_queue],
        )
        for member in bad or []:
            await quarantine(self.engine.redis, keys, f"{self.engine.delayed} {digest(member)}", member,
                             "a delayed job that names no queue of this hive and job")
        wait = DELAYED_CHECK_S
        if next_due:
            wait = min(wait, max(float(next_due) / 1000 - time.time(), 0.0))
        self._next_delayed_check = now + wait

    async def _poll_queues(self) -> None:
        await self._move_due_delayed()
        if self.allow_pick_jobs:
            now = int(time.time() * 1000)
            blocked = self.limits.blocked(set(self._limited.values())) if self._limited else set()
            for group in self.groups:
                if blocked:
                    group = [q for q in group if self._limited.get(q) not in blocked]
                if self.job_counter >= self.max_jobs:
                    break
                if not group:
                    continue
                if len(group) == 1:
                    job_ids = await self.pool.zrangebyscore(
                        group[0], min=float("-inf"), max=now, start=0, num=self.queue_read_limit
                    )
                    await self._start_from(await self._readable([(group[0], job_id) for job_id in job_ids]))
                    continue
                async with self.pool.pipeline(transaction=False) as pipe:
                    for queue in group:
                        pipe.zrangebyscore(
                            queue, min=float("-inf"), max=now, start=0, num=self.queue_read_limit, withscores=True
                        )
                    replies = await pipe.execute()
                found = sorted(
                    (score, queue, job_id)
                    for queue, reply in zip(group, replies, strict=True)
                    for job_id, score in reply
                )[: self.queue_read_limit]
                await self._start_from(await self._readable([(queue, job_id) for _, queue, job_id in found]))
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]

    async def _readable(self, members: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
        """The (queue, job id) of ``members`` whose id is text; any other member is quarantined and taken off its
        queue, so that it cannot hold the head of the queue (and the poll loop) forever."""
        out = []
        for queue, member in members:
            try:
                out.append((queue, member.decode()))
            except UnicodeDecodeError:
                await quarantine(self.engine.redis, self.engine.keys, f"{queue} {digest(member)}", member,
                                 "a queued job id that is not UTF-8 text", [("ZREM", queue, member)])
        return out

    async def _start_from(self, candidates: list[tuple[str, str]]) -> None:
        """Start the jobs of ``candidates`` ((queue, job id), in priority order) while slots are free. A run of
        jobs of unlimited types is taken in one round trip; a limited type's job alone (its cap and its tokens
        are checked per job), after the run before it, so the order holds."""
        run: list[tuple[str, str]] = []
        refused: set[str] = set()
        for queue, job_id in candidates:
            if job_id in self.tasks:
                continue
            kind = self._limited.get(queue)
            if kind is None:
                run.append((queue, job_id))
                continue
            await self._take_and_launch(run)
            run = []
            if self.job_counter >= self.max_jobs:
                return
            if kind in refused or kind in self.limits.blocked([kind]):
                refused.add(kind)
                continue
            token = kind in self.limits.rated
            if token and not (await self.limits.grant([kind], 1)).get(kind):
                refused.add(kind)
                continue
            (score,) = await self._take_jobs([(queue, job_id)], 1)
            if score is None:
                if token:
                    await self.limits.give_back({kind: 1})
                continue
            self.limits.started(kind)
            self._job_type[job_id] = kind
            self._launch(queue, job_id, score)
        await self._take_and_launch(run)

    async def _take_and_launch(self, jobs: list[tuple[str, str]]) -> None:
        room = self.max_jobs - self.job_counter
        if jobs and room > 0:
            for (queue, job_id), score in zip(jobs, await self._take_jobs(jobs, room), strict=True):
                if score is not None:
                    self._launch(queue, job_id, score)

    def _launch(self, queue: str, job_id: str, score: float) -> None:
        self.job_counter += 1
        self._job_queue[job_id] = queue
        job = self.loop.create_task(self.run_job(job_id, int(score)))
        job.add_done_callback(functools.partial(self._job_done, job_id))
        self.tasks[job_id] = job

    async def _take_jobs(self, jobs: list[tuple[str, str]], most: int) -> list[float | None]:
        """Mark up to ``most`` of the (queue, job id) ``jobs`` in progress here, in order, skipping those another
        spore took or that are not due: each one's score, or None."""
        keys = [key for queue, job_id in jobs for key in (queue, self.arq_keys.in_progress(job_id))]
        args: list[int | str] = [int(time.time() * 1000), int(self.in_progress_timeout_s * 1000), most]
        args += [job_id for _, job_id in jobs]
        replies = await self._take(keys=keys, args=args)
        return [float(reply) if reply not in (b"", "", None) else None for reply in replies]

    def _job_done(self, job_id: str, task: asyncio.Task[Any] | None = None) -> None:
        if task is not None and not task.cancelled() and task.exception() is not None:
            # One job's failure (Redis away while ARQ finished it) is not the poll loop's end: the job's
            # in-progress key lapses and the job runs again, fenced against a newer attempt.
            logger.warning("job %s ended with an error: %r", job_id, task.exception())
        self.job_counter -= 1
        self._job_queue.pop(job_id, None)
        kind = self._job_type.pop(job_id, None)
        if kind is not None:
            self.limits.finished(kind)
        self.wake_event.set()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        queue = self._job_queue.get(job_id, self.queue_name)
        keys = self.arq_keys
        early = self._put_back.pop(job_id, None)
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.delete(keys.in_progress(job_id))
            if finish:
                pipe.delete(keys.retry(job_id), keys.job(job_id))
                pipe.zrem(queue, job_id)
            elif early is not None and early.eta is not None:
                pipe.zrem(queue, job_id)
                pipe.zadd(self.engine.delayed, {delayed_member(early): int(early.eta.timestamp() * 1000)})
            elif incr_score:
                pipe.zincrby(queue, incr_score, job_id)
            await pipe.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        queue = self._job_queue.get(job_id, self.queue_name)
        keys = self.arq_keys
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.delete(keys.retry(job_id), keys.in_progress(job_id), keys.job(job_id))
            pipe.zrem(queue, job_id)
            await pipe.execute()


class ArqWorker(Worker):
    """The :class:`~hive_framework.broker.Worker` face of an ARQ worker over a spore's queues."""

    def __init__(self, engine: ArqEngine, runner: TaskRunner) -> None:
        types = sorted(runner.task_types)
        groups = [[engine.keys.node_queue(runner.node_id)], engine.queues(types)[: len(types)],
                  engine.queues(types)[len(types) :]]
        groups = [g for g in groups if g]
        self.queues = [q for g in groups for q in g]
        self.arq = _MultiQueueWorker(engine, runner, groups)

    async def main(self) -> None:
        await self.arq.main()

    @property
    def running(self) -> int:
        return int(self.arq.job_counter)

    def in_flight(self) -> list[asyncio.Task[Any]]:
        return list(self.arq.tasks.values())

    def pause(self) -> None:
        self.arq.allow_pick_jobs = False

    def resume(self) -> None:
        self.arq.allow_pick_jobs = True
        self.arq.wake_event.set()

    def wake(self) -> None:
        self.arq.wake_event.set()

    async def refresh_leases(self) -> None:
        """Extend the in-progress key of every job this spore runs, so live work is never re-run."""
        if not self.arq.tasks:
            return
        ttl_ms = int(self.arq.in_progress_timeout_s * 1000)
        async with self.arq.pool.pipeline(transaction=False) as pipe:
            for job_id in self.arq.tasks:
                pipe.pexpire(self.arq.arq_keys.in_progress(job_id), ttl_ms)
            await pipe.execute()
