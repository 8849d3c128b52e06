"""The spore: a worker process that takes tasks from the queues, runs them through ``execute`` and reports back.

It runs ARQ's job machinery (:class:`HiveWorker`) over several queues in strict priority order, keeps a
lease on each running job so a killed spore's tasks run again elsewhere, beats a :class:`NodeInfo`
heartbeat, and obeys broadcasts. On SIGTERM/SIGINT it stops taking work, lets running tasks finish for
``HIVE_SHUTDOWN_GRACE`` seconds and hands the rest back to the queue: no task is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import attrs
import psutil
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Retry, Worker, func
from redis.asyncio import Redis

from . import __version__, wire
from .errors import UnknownTaskType, WireError
from .kernel import Kernel
from .models import BroadcastMessage, BroadcastReply, NodeInfo, TaskMessage, TaskStatus, utcnow
from .tasks import TaskContext

logger = logging.getLogger(__name__)

#: ARQ's own job timeout; hive enforces each task's timeout itself, inside this.
_ENGINE_TIMEOUT_S = 7 * 86400


class HiveWorker(Worker):
    """ARQ's worker serving several queues: it starts a job from a lower queue only when no higher one has work.

    Only the parts of ARQ that assume a single queue are replaced: polling, starting and finishing
    jobs. Running a job (``run_job``: retries, cancellation, timeouts) is ARQ's own.
    """

    def __init__(self, spore: Spore, *, queues: list[str], redis: Redis) -> None:
        from .default_plugins.broker import RUN_FUNCTION, job_deserializer, job_serializer

        config = spore.kernel.config
        super().__init__(
            functions=[func(spore.run_task_job, name=RUN_FUNCTION, timeout=_ENGINE_TIMEOUT_S, max_tries=10**9)],
            queue_name=queues[0],
            redis_pool=cast(ArqRedis, redis),  # ARQ only uses plain Redis commands of its pool here
            handle_signals=False,
            max_jobs=spore.concurrency,
            job_timeout=_ENGINE_TIMEOUT_S,
            keep_result=0,
            poll_delay=config.poll_interval,
            max_tries=10**9,
            retry_jobs=True,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            log_results=False,
        )
        self.queues = list(queues)
        self.in_progress_timeout_s = config.lease_seconds
        self._job_queue: dict[str, str] = {}
        self._wake = asyncio.Event()

    async def main(self) -> None:
        """Poll the queues until cancelled; a freed slot wakes the loop at once."""
        self.ctx["redis"] = self.pool
        while True:
            await self._poll_iteration()
            # Not asyncio.wait_for: on 3.11 it swallows a cancel that lands just as the wake event is set,
            # and this loop then never stops (a spore hung on shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs:
            now = int(time.time() * 1000)
            for queue in self.queues:
                if self.job_counter >= self.max_jobs:
                    break
                job_ids = await self.pool.zrangebyscore(
                    queue, min=float("-inf"), max=now, start=0, num=self.queue_read_limit
                )
                if job_ids:
                    await self._start_from(queue, job_ids)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()

    async def _start_from(self, queue: str, job_ids: list[bytes]) -> None:
        for raw_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            job_id = raw_id.decode()
            if job_id in self.tasks:
                continue
            in_progress = in_progress_key_prefix + job_id
            async with self.pool.pipeline(transaction=True) as pipe:
                await pipe.watch(in_progress)
                running = await pipe.exists(in_progress)
                score = await pipe.zscore(queue, job_id)
                if running or score is None or score > time.time() * 1000:
                    continue
                pipe.multi()
                pipe.psetex(in_progress, int(self.in_progress_timeout_s * 1000), b"1")
                try:
                    await pipe.execute()
                except Exception as exc:  # WatchError: another spore took it first
                    logger.debug("job %s taken elsewhere: %s", job_id, exc)
                    continue
            self.job_counter += 1
            self._job_queue[job_id] = queue
            job = self.loop.create_task(self.run_job(job_id, int(score)))
            job.add_done_callback(functools.partial(self._job_done, job_id))
            self.tasks[job_id] = job

    def _job_done(self, job_id: str, _task: object = None) -> None:
        self.job_counter -= 1
        self._job_queue.pop(job_id, None)
        self._wake.set()

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
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.delete(in_progress_key_prefix + job_id)
            if finish:
                pipe.delete(retry_key_prefix + job_id, job_key_prefix + job_id)
                pipe.zrem(queue, job_id)
            elif incr_score:
                pipe.zincrby(queue, incr_score, job_id)
            await pipe.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        queue = self._job_queue.get(job_id, self.queue_name)
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.delete(retry_key_prefix + job_id, in_progress_key_prefix + job_id, job_key_prefix + job_id)
            pipe.zrem(queue, job_id)
            await pipe.execute()

    async def refresh_leases(self) -> None:
        """Extend the in-progress key of every job this spore runs, so live work is never re-run."""
        if not self.tasks:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in self.tasks:
                pipe.pexpire(in_progress_key_prefix + job_id, int(self.in_progress_timeout_s * 1000))
            await pipe.execute()

    @property
    def running(self) -> int:
        return int(self.job_counter)


def retry_delay(config: Any, attempt: int) -> float:
    """Exponential backoff: ``HIVE_RETRY_BACKOFF * 2**(attempt-1)``, capped at ``HIVE_RETRY_BACKOFF_MAX``."""
    return float(min(config.retry_backoff * 2 ** (attempt - 1), config.retry_backoff_max))


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def persisted_node_name(state_dir: str = "") -> str:
    """``host-xxxxxxxx``, the same across restarts: the suffix is kept in the state directory."""
    base = Path(state_dir) if state_dir else Path.home() / ".local" / "state" / "hive-framework"
    path = base / "node-id"
    try:
        suffix = path.read_text().strip()
    except OSError:
        suffix = ""
    if not suffix:
        suffix = uuid.uuid4().hex[:8]
        try:
            base.mkdir(parents=True, exist_ok=True)
            path.write_text(suffix + "\n")
        except OSError:
            return default_node_name()
    return f"{socket.gethostname()}-{suffix}"


def detect_gpu() -> bool:
    """Best-effort GPU detection without importing heavy libraries: NVIDIA or AMD (ROCm) device nodes."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/kfd")) or shutil.which("nvidia-smi") is not None


class Spore:
    """One worker node. ``await Spore(kernel).run()`` serves until SIGTERM, SIGINT or a SHUTDOWN broadcast."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> None:
        self.kernel = kernel
        self.config = kernel.config
        self._named = bool(name or self.config.node_name)
        self.node_name = name or self.config.node_name or persisted_node_name(self.config.state_dir)
        self.node_id = self.node_name
        self.concurrency = concurrency or self.config.concurrency
        self.capabilities = dict(capabilities or {})
        self._gpu = detect_gpu()
        #: Threads for sync task handlers; not the loop's default executor, so stopping never waits on a
        #: handler stuck past its timeout (its task has already been failed or handed back).
        self.executor = ThreadPoolExecutor(max_workers=self.concurrency + 4, thread_name_prefix="hive-task")
        self.broker = kernel.create_broker()
        self.worker: Any = None
        self.paused = False
        self.started_at = utcnow()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._loops: list[asyncio.Task[Any]] = []
        self.log = logging.getLogger(f"hive.spore.{self.node_name}")

    # --- control -----------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop taking new tasks; running ones go on."""
        self.paused = True
        if self.worker is not None:
            self.worker.allow_pick_jobs = False

    def resume(self) -> None:
        self.paused = False
        if self.worker is not None and not self._stop.is_set():
            self.worker.allow_pick_jobs = True
            self.worker._wake.set()

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        if self.worker is not None:
            self.worker.allow_pick_jobs = False
        self._stop.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- life cycle ----------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if not self.broker.is_connected:
            await self.broker.connect()
        await self._claim_node_id()
        self.worker = self.broker.create_worker(self)
        if self.paused:
            self.worker.allow_pick_jobs = False
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        pubsub = await self.broker.subscribe_broadcast()
        await self._beat()
        self._loops = [
            asyncio.create_task(self.worker.main(), name="hive-poll"),
            asyncio.create_task(self._heartbeat_loop(), name="hive-heartbeat"),
            asyncio.create_task(self._lease_loop(), name="hive-lease"),
            asyncio.create_task(self._listen(pubsub), name="hive-broadcast"),
        ]
        self.log.info(
            "spore %s ready: %d slots, queues %s, task types %s",
            self.node_name, self.concurrency, self.worker.queues, sorted(self.kernel.task_types),
        )
        self._ready.set()
        try:
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait([stopper, *self._loops], return_when=asyncio.FIRST_COMPLETED)
            for loop_task in self._loops:
                if loop_task.done() and not loop_task.cancelled() and loop_task.exception():
                    self.log.error("spore loop %s died: %r", loop_task.get_name(), loop_task.exception())
            stopper.cancel()
        finally:
            await self._shutdown(pubsub)

    async def _shutdown(self, pubsub: Any) -> None:
        self.worker.allow_pick_jobs = False
        poll = self._loops[0]
        poll.cancel()
        running = [t for t in self.worker.tasks.values() if not t.done()]
        if running:
            self.log.info(
                "stopping: waiting up to %ss for %d running task(s)", self.config.shutdown_grace, len(running)
            )
            _, pending = await asyncio.wait(running, timeout=self.config.shutdown_grace)
            for job in pending:
                job.cancel()
            if pending:
                self.log.info("handing %d unfinished task(s) back to the queue", len(pending))
                await asyncio.wait(pending, timeout=10)
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        with contextlib.suppress(Exception):
            async with self.broker.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.kernel.keys.node(self.node_id))
                pipe.srem(self.kernel.keys.nodes, self.node_id)
                pipe.hdel(self.kernel.keys.node_infos, self.node_id)
                await pipe.execute()
        close = getattr(self.worker, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        await self.broker.disconnect()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.log.info("spore %s stopped", self.node_name)

    async def _claim_node_id(self) -> None:
        """Two unnamed live spores must not share an id: if another process beats under ours, add our pid.

        A spore given ``--name`` keeps it (a restart after a crash takes its old place).
        """
        if self._named:
            return
        raw = await self.broker.redis.get(self.kernel.keys.node(self.node_id))
        if raw is None:
            return
        try:
            other = wire.loads(raw, NodeInfo)
        except WireError:
            return
        if (other.host, other.pid) != (socket.gethostname(), os.getpid()):
            self.log.warning("node id %s is in use by pid %s on %s; using %s-%s", self.node_id, other.pid,
                             other.host, self.node_id, os.getpid())
            self.node_id = self.node_name = f"{self.node_id}-{os.getpid()}"

    # --- running one task ------------------------------------------------------------------------------

    async def run_task_job(self, ctx: dict[str, Any], task_id: str) -> None:
        """The ARQ job function: run the task, and turn a retry into ARQ's ``Retry``."""
        retry_in = await self.run_task(task_id, str(ctx.get("job_id", task_id)))
        if retry_in is not None:
            raise Retry(defer=retry_in)

    def begin_attempt(self, message: TaskMessage | None, engine_job_id: str) -> str:
        """Decide what to do with a task a spore just took, and mark the attempt on ``message``.

        ``"skip"``: nothing to run (no record, already final, waiting, or moved to another engine job).
        ``"exhausted"``: out of attempts (its spores kept dying); ``message`` is now failed.
        ``"run"``: ``message`` is now running here with ``attempt`` counted; save it, then run it.
        """
        if message is None:
            return "skip"
        if message.is_terminal or engine_job_id != message.engine_job_id or message.status == TaskStatus.WAITING:
            return "skip"
        message.attempt += 1
        if message.attempt > message.max_retries + 1:
            message.status = TaskStatus.FAILED
            message.completed_at = utcnow()
            lost = message.error or "the spore running it was lost"
            message.error = f"{lost} (gave up after {message.attempt - 1} attempts)"
            return "exhausted"
        message.status = TaskStatus.RUNNING
        message.started_at = utcnow()
        message.completed_at = None
        message.assigned_node = self.node_id
        return "run"

    async def run_task(
        self,
        task_id: str,
        engine_job_id: str,
        *,
        message: TaskMessage | None = None,
        ack: Any = None,
        started: bool = False,
    ) -> float | None:
        """Run one attempt of a task and record its outcome; the engine-neutral heart of a spore.

        Returns the delay before the next attempt when it failed and may retry, else ``None``. A task
        cancelled, finished or moved to another engine job meanwhile is skipped. ``ack`` is passed to the
        broker's saves so an engine can settle its job in the same round trip. ``started`` means the engine
        already did :meth:`begin_attempt` and saved the running state (batched for many tasks). On
        cancellation (shutdown) the task is handed back untouched and ``CancelledError`` propagates.
        """
        broker = self.broker
        if not started:
            if message is None:
                message = await broker.get_task_status(task_id)
            previous = message.status if message is not None else None
            decision = self.begin_attempt(message, engine_job_id)
            if decision == "skip" or message is None:
                if message is None:
                    self.log.warning("task %s has no record (expired or deleted); dropping its job", task_id)
                await broker.settle(ack)
                return None
            if decision == "exhausted":
                await broker.save_unless_cancelled(message, previous=previous, ack=ack)
                return None
            if not await broker.save_unless_cancelled(message, previous=previous):
                await broker.settle(ack)
                return None
        assert message is not None
        context = TaskContext(
            task=message,
            node_id=self.node_id,
            node_name=self.node_name,
            kernel=self.kernel,
            redis=broker.redis,
            logger=self.log,
            spore=self,
        )
        retriable = True
        try:
            async with asyncio.timeout(message.timeout) as deadline:
                result = await self._execute(message, context)
            wire.json_size(result)
        except asyncio.CancelledError:
            # Shutdown: hand the task back untouched so another spore (or this one, later) runs it.
            message.status = TaskStatus.PENDING
            message.attempt -= 1
            message.started_at = None
            message.assigned_node = None
            await asyncio.shield(broker.save_unless_cancelled(message, previous=TaskStatus.RUNNING, ack=ack))
            raise
        except TimeoutError:
            if not deadline.expired():
                error = "TimeoutError raised by the task"
            else:
                error = f"TaskTimeout: task ran past its timeout of {message.timeout:g}s"
        except UnknownTaskType as exc:
            retriable = False
            error = f"UnknownTaskType: spore {self.node_name} cannot run it: {exc}"
        except WireError as exc:
            retriable = False
            error = f"BadResult: the task's result is not JSON data ({exc})"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            message.status = TaskStatus.COMPLETED
            message.result = result
            message.error = None
            message.completed_at = utcnow()
            if not await broker.save_unless_cancelled(message, previous=TaskStatus.RUNNING, ack=ack):
                await broker.settle(ack)
            return None
        message.error = error
        if retriable and message.attempt <= message.max_retries:
            delay = retry_delay(self.config, message.attempt)
            message.status = TaskStatus.RETRYING
            if not await broker.save_unless_cancelled(message, previous=TaskStatus.RUNNING, ack=ack):
                await broker.settle(ack)
                return None
            self.log.info("task %s attempt %d failed (%s); retrying in %.2fs", task_id, message.attempt, error, delay)
            return delay
        message.status = TaskStatus.FAILED
        message.completed_at = utcnow()
        if not await broker.save_unless_cancelled(message, previous=TaskStatus.RUNNING, ack=ack):
            await broker.settle(ack)
        self.log.warning("task %s failed after %d attempt(s): %s", task_id, message.attempt, error)
        return None

    async def _execute(self, message: TaskMessage, context: TaskContext) -> Any:
        """Run the task, or each payload of a chunked task in turn (one item failing does not stop the rest)."""
        if message.chunk is None:
            return await self.kernel.execute(message, context)
        outcomes: list[dict[str, Any]] = []
        for payload in message.chunk:
            part = attrs.evolve(message, payload=payload, chunk=None)
            try:
                value = await self.kernel.execute(part, attrs.evolve(context, task=part))
                wire.json_size(value)
                outcomes.append({"ok": True, "result": value})
            except UnknownTaskType:
                raise
            except Exception as exc:
                outcomes.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return outcomes

    # --- background loops --------------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        memory = psutil.virtual_memory()
        capabilities = {
            "gpu": self._gpu,
            "free_memory_mb": round(memory.available / 2**20),
            "cpu_count": psutil.cpu_count() or 1,
            "tags": sorted({*self.config.node_tags, *self.capabilities.get("tags", [])}),
            **{k: v for k, v in self.capabilities.items() if k != "tags"},
        }
        return NodeInfo(
            node_id=self.node_id,
            node_name=self.node_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            last_heartbeat=utcnow(),
            cpu_usage=psutil.cpu_percent(interval=None),
            memory_usage=memory.percent,
            active_tasks=self.worker.running if self.worker else 0,
            concurrency=self.concurrency,
            paused=self.paused,
            capabilities=capabilities,
            task_types=sorted(self.kernel.task_types),
            plugins=self.kernel.plugin_names(),
            hive_version=__version__,
            code_version=self.config.code_version,
        )

    async def _beat(self) -> None:
        ttl = max(self.config.heartbeat_interval * 3, 1.0)
        info = wire.dumps(self.node_info())
        async with self.broker.redis.pipeline(transaction=True) as pipe:
            pipe.psetex(self.kernel.keys.node(self.node_id), int(ttl * 1000), info)
            pipe.sadd(self.kernel.keys.nodes, self.node_id)
            pipe.hset(self.kernel.keys.node_infos, mapping={self.node_id: info})
            await pipe.execute()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self._beat()
            except Exception as exc:
                self.log.warning("heartbeat failed: %s", exc)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                await self.worker.refresh_leases()
            except Exception as exc:
                self.log.warning("lease refresh failed: %s", exc)

    async def _listen(self, pubsub: Any) -> None:
        async for raw in pubsub.listen():
            if raw.get("type") != "message":
                continue
            try:
                message = wire.loads(raw["data"], BroadcastMessage)
            except WireError as exc:
                self.log.warning("ignoring a malformed broadcast: %s", exc)
                continue
            if message.target_nodes and not {self.node_id, self.node_name} & set(message.target_nodes):
                continue
            details = await self.kernel.broadcast(message, self)
            if message.message_id:
                with contextlib.suppress(Exception):
                    await self.broker.send_reply(
                        BroadcastReply(
                            message_id=message.message_id,
                            node_id=self.node_id,
                            node_name=self.node_name,
                            command=message.command,
                            detail="; ".join(details),
                        )
                    )
            if self.paused is False and self.worker is not None:
                self.worker._wake.set()
            await self._beat()
