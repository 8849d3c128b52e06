"""The spore: a worker process that takes tasks from the queues, runs them through ``execute`` and reports back.

Its engine's :class:`~hive_framework.broker.Worker` takes jobs in strict priority order and hands them to an
:class:`~hive_framework.broker.AttemptRunner` that runs them here; the spore keeps the leases of running
jobs fresh so a killed spore's tasks run again elsewhere, beats a :class:`NodeInfo` heartbeat, and obeys
broadcasts. On SIGTERM/SIGINT it stops taking work, lets running tasks finish for
``HIVE_SHUTDOWN_GRACE`` seconds and hands the rest back to the queue: no task is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs
import psutil

from . import __version__, wire
from .broker import AttemptRunner, MessageBroker, Worker
from .broker.placement import advertise, advertised_options
from .broker.poison import digest, quarantine
from .counters import Tally
from .errors import FatalCondition, UnknownTaskType, WireError
from .isolation import ProcessPool
from .kernel import Kernel
from .limits import Buckets, TypeLimits, limits_of
from .models import BroadcastMessage, BroadcastReply, NodeInfo, TaskMessage, utcnow
from .outage import RedisLink, is_outage, try_twice
from .redisutil import raise_if_cancelling
from .tasks import TaskContext

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: One INFO line per task received and finished (type, id, node, attempt; then duration and outcome), when
#: ``HIVE_LOG_TASKS`` (``hive spore --log-tasks``) is on or this logger is at DEBUG (``--log-level debug``).
#: Off by default: the two lines cost 48-81 us of CPU per task (bench/task_log_cost.py), against about 195 us
#: of spore CPU for a whole no-op task in bench/run.py.
task_log = logging.getLogger("hive.tasks")


class HandlerPool(ThreadPoolExecutor):
    """The spore's threads for sync handlers, counting the calls really running (``busy``), not idle threads."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._busy = 0
        self._busy_lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Handler calls started and not yet returned."""
        return self._busy

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def counted() -> T:
            with self._busy_lock:
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._busy_lock:
                    self._busy -= 1

        return super().submit(counted)


#: Seconds between two writes of a spore's task counts to the cluster-wide counters (issue 20).
COUNTERS_FLUSH_S = 1.0

#: A broadcast handler's answer starting with one of these makes the spore's reply ``ok: false``.
REFUSALS = ("rejected:", "failed:", "error:")


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
        self.executor = HandlerPool(max_workers=self.concurrency + 4, thread_name_prefix="hive-task")
        #: Child processes for sync handlers declared isolation="process" (started on first use).
        self.processes = ProcessPool(
            self.concurrency, preload={t.handler.__module__ for t in kernel.task_types.values()
                                       if t.isolation == "process"},
        )
        self.broker = MessageBroker(kernel)
        self.worker: Worker | None = None
        self.paused = False
        self.started_at = utcnow()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._loops: list[asyncio.Task[Any]] = []
        self.log = logging.getLogger(f"hive.spore.{self.node_name}")
        #: The link to Redis every loop reports to: one log line per outage and per recovery.
        self.link = RedisLink(self.log, auth_limit=self.config.redis_auth_limit)
        #: Why the spore stopped on its own (a named fatal condition), else ``None``.
        self.fatal: str | None = None

    # --- control -----------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop taking new tasks; running ones go on."""
        self.paused = True
        if self.worker is not None:
            self.worker.pause()

    def resume(self) -> None:
        self.paused = False
        if self.worker is not None and not self._stop.is_set():
            self.worker.resume()

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        if self.worker is not None:
            self.worker.pause()
        self._stop.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- life cycle ----------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if not self.broker.is_connected:
            await self.broker.connect()
        await self._claim_node_id()
        runner = AttemptRunner(
            self.broker, node_id=self.node_id, node_name=self.node_name, concurrency=self.concurrency,
            task_types=sorted(self.kernel.task_types), execute=self._execute, log=self.log, link=self.link,
            limits=TypeLimits(limits_of(self.kernel.task_types, self.config.limits),
                              Buckets(self.broker.redis, self.kernel.keys.rate)),
        )
        for name, limit in sorted(runner.limits.limits.items()):
            self.log.info("task type %s: %s", name, ", ".join(
                ([f"rate {limit.rate} (burst {limit.rate.burst}) across the hive"] if limit.rate else [])
                + ([f"at most {limit.concurrency} at once here"] if limit.concurrency else [])))
        worker = self.worker = self.broker.engine.create_worker(runner)
        if self.paused:
            worker.pause()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        pubsub = await self.broker.subscribe_broadcast()
        await advertise(self.broker.redis, self.kernel.keys, self.kernel.task_types)
        await self._beat()
        first_pubsub: list[Any] = [pubsub]

        async def listen() -> None:
            await self._listen(first_pubsub.pop() if first_pubsub else None)

        self._loops = [
            asyncio.create_task(self._keep("hive-poll", worker.main), name="hive-poll"),
            asyncio.create_task(self._keep("hive-heartbeat", self._heartbeat_loop), name="hive-heartbeat"),
            asyncio.create_task(self._keep("hive-lease", self._lease_loop), name="hive-lease"),
            asyncio.create_task(self._keep("hive-broadcast", listen), name="hive-broadcast"),
            asyncio.create_task(self._keep("hive-counters", self._counters_loop), name="hive-counters"),
        ]
        self.log.info(
            "spore %s ready: %d slots, queues %s, task types %s",
            self.node_name, self.concurrency, worker.queues, sorted(self.kernel.task_types),
        )
        self._ready.set()
        try:
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait([stopper, *self._loops], return_when=asyncio.FIRST_COMPLETED)
            for loop_task in self._loops:
                if loop_task.done() and not loop_task.cancelled() and loop_task.exception():
                    self.fatal = self.fatal or f"spore loop {loop_task.get_name()} died: {loop_task.exception()!r}"
            stopper.cancel()
        finally:
            await self._shutdown(worker, first_pubsub[0] if first_pubsub else None)
        if self.fatal:
            self.log.error("spore %s stopped on a fatal condition: %s", self.node_name, self.fatal)
            raise FatalCondition(self.fatal)

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run one of the spore's loops until the spore stops: a loop that fails is started again, after Redis
        answers again when the failure was an outage (a lost connection is never taken as a stop). Running
        tasks are not touched meanwhile. Ends only on a named fatal condition (then the spore stops)."""
        backoff = self.link.backoff()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_outage(exc):
                    self.link.lost(exc, name)
                else:
                    self.log.error("spore loop %s failed (%r); starting it again", name, exc, exc_info=exc)
            if time.monotonic() - started > 30:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())
            if not await self._await_redis(name):
                return

    async def _await_redis(self, where: str) -> bool:
        """Ping until Redis answers (``True``), or until a fatal condition holds (``False``, the spore stops)."""
        backoff = self.link.backoff()
        while not self._stop.is_set():
            try:
                await self.broker.redis.ping()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.link.lost(exc, where)
                reason = self.link.fatal_reason()
                if reason is not None:
                    self.fatal = reason
                    self.request_stop()
                    return False
                await asyncio.sleep(backoff.next_delay())
            else:
                self.link.back()
                return True
        return False

    async def _shutdown(self, worker: Worker, pubsub: Any | None) -> None:
        worker.pause()
        poll = self._loops[0]
        poll.cancel()
        running = [t for t in worker.in_flight() if not t.done()]
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
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        await self._flush_counters_on_exit()
        await self._leave_cluster()
        with contextlib.suppress(Exception):
            await worker.close()
        await self.broker.disconnect()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.processes.close()
        self.log.info("spore %s stopped", self.node_name)

    async def _leave_cluster(self) -> None:
        """Remove this spore from the cluster view (else its entries linger until the nexus prunes them)."""

        async def leave() -> None:
            async with self.broker.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.kernel.keys.node(self.node_id))
                pipe.srem(self.kernel.keys.nodes, self.node_id)
                pipe.hdel(self.kernel.keys.node_infos, self.node_id)
                await pipe.execute()

        await try_twice(leave, f"take spore {self.node_name} out of the cluster view", self.log)

    async def _claim_node_id(self) -> None:
        """One live process per node id. The first heartbeat is written only if no other process beats under
        the id (``SET NX``). An unnamed spore that finds its id taken adds its pid; a named one (``--name``)
        waits out the other heartbeat (a crashed predecessor's lapses within three intervals, and one on this
        host whose pid is gone is taken over at once), then refuses to start while another process still beats
        under the id: two spores under one id would both take its pinned tasks."""
        ttl = max(self.config.heartbeat_interval * 3, 1.0)
        deadline = time.monotonic() + ttl + self.config.heartbeat_interval
        host, pid = socket.gethostname(), os.getpid()
        while True:
            raise_if_cancelling()
            key = self.kernel.keys.node(self.node_id)
            if await self.broker.redis.set(key, wire.dumps(self.node_info()), nx=True, px=int(ttl * 1000)):
                return
            raw = await self.broker.redis.get(key)
            try:
                other = wire.loads(raw, NodeInfo) if raw is not None else None
            except WireError:
                other = None
            if other is None or (other.host, other.pid) == (host, pid):
                return
            if other.host == host and not psutil.pid_exists(other.pid):
                self.log.warning("node id %s was held by pid %s, which is gone; taking it over", self.node_id,
                                 other.pid)
                return
            if not self._named:
                self.log.warning("node id %s is in use by pid %s on %s; using %s-%s", self.node_id, other.pid,
                                 other.host, self.node_id, pid)
                self.node_id = self.node_name = f"{self.node_id}-{pid}"
                continue
            if time.monotonic() > deadline:
                raise FatalCondition(
                    f"node id {self.node_id!r} is in use by a live spore (pid {other.pid} on {other.host}); "
                    "refusing to run a second one under it"
                )
            await asyncio.sleep(min(self.config.heartbeat_interval / 2, 1.0))

    # --- running one task ------------------------------------------------------------------------------

    async def _execute(self, message: TaskMessage) -> Any:
        """Run the task, logging one line when it is received and one when it is finished (at INFO)."""
        if not (self.config.log_tasks or task_log.isEnabledFor(logging.DEBUG)):
            return await self._run_task(message)
        fields = {"task_type": message.task_type, "task_id": message.task_id, "node": self.node_name,
                  "attempt": message.attempt}
        task_log.info("task received %s %s on %s, attempt %d", message.task_type, message.task_id,
                      self.node_name, message.attempt, extra=fields)
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await self._run_task(message)
            outcome = "completed"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled (timeout or stop)"
            raise
        except Exception as exc:
            outcome = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            duration = time.perf_counter() - started
            task_log.info("task finished %s %s on %s, attempt %d, %.3fs, %s", message.task_type, message.task_id,
                          self.node_name, message.attempt, duration, outcome,
                          extra={**fields, "duration_s": round(duration, 6), "outcome": outcome.split(":")[0]})

    async def _run_task(self, message: TaskMessage) -> Any:
        """Run the task here, or each payload of a chunked task in turn (one item failing does not stop the rest)."""
        context = TaskContext(
            task=message,
            node_id=self.node_id,
            node_name=self.node_name,
            kernel=self.kernel,
            redis=self.broker.redis,
            logger=self.log,
            spore=self,
        )
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
            task_options={name: advertised_options(t) for name, t in self.kernel.task_types.items()},
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
        """Beat every interval; while Redis is away, try at the interval (each failure is the same outage), and
        the first beat after it re-registers the node (Redis may have come back without it)."""
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self._beat()
            except Exception as exc:
                if not is_outage(exc):
                    self.log.warning("heartbeat failed: %s", exc)
                    continue
                self.link.lost(exc, "heartbeat")
                reason = self.link.fatal_reason()
                if reason is not None:
                    self.fatal = reason
                    self.request_stop()
                    return
            else:
                self.link.back()

    async def _lease_loop(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                if self.worker is not None:
                    await self.worker.refresh_leases()
            except Exception as exc:
                if is_outage(exc):
                    self.link.lost(exc, "lease")
                else:
                    self.log.warning("lease refresh failed: %s", exc)

    @property
    def tally(self) -> Tally | None:
        """The task counts the ``counters`` default plugin keeps in memory (``None`` when it is disabled)."""
        return getattr(self.kernel.pm.get_plugin("counters"), "tally", None)

    async def _flush_counters(self) -> int:
        tally = self.tally
        if tally is None:
            return 0
        keys = self.kernel.keys
        return await tally.flush(self.broker.redis, keys.counters, keys.counters_flushed)

    async def _counters_loop(self) -> None:
        """Add the task counts of the last second to the cluster-wide counters (nothing is sent when there are
        none); while Redis is away the counts wait in memory, and are sent once it answers."""
        failing = False
        while True:
            raise_if_cancelling()
            await asyncio.sleep(COUNTERS_FLUSH_S)
            try:
                if await self._flush_counters():
                    self.link.back()
                    if failing:
                        self.log.info("writing the task counters works again")
                    failing = False
            except Exception as exc:
                if is_outage(exc):
                    self.link.lost(exc, "counters")
                elif not failing:  # once per run of failures, not once a second
                    self.log.warning("writing the task counters failed (kept, tried again each second): %s", exc)
                    failing = True

    async def _flush_counters_on_exit(self) -> None:
        """Send what the last second counted before the spore goes (the running tasks have ended by now)."""
        await try_twice(self._flush_counters, "write the task counters", self.log)
        tally = self.tally
        if tally is not None and tally.unwritten:
            self.log.warning("%d task counter field(s) could not be written and are lost", tally.unwritten)

    async def _listen(self, pubsub: Any | None) -> None:
        """Obey broadcasts. Reads with a timeout (never a socket read without one), so a dead connection
        surfaces as an error; the loop is then started again with a fresh subscription."""
        if pubsub is None:
            pubsub = await self.broker.subscribe_broadcast()
        try:
            # Until the spore stops (not ``while True``: a broadcast handler that stops the spore, as an OTA
            # rollback does, runs inside this loop, and a cancellation swallowed there must not keep it alive).
            while not self._stop.is_set():
                raise_if_cancelling()
                raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if raw is None or raw.get("type") != "message":
                    continue
                await self._obey(raw["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _obey(self, data: Any) -> None:
        """Run one broadcast (a malformed one is logged and skipped) and reply to it."""
        try:
            message = wire.loads(data, BroadcastMessage)
        except WireError as exc:
            channel = self.kernel.keys.broadcast_channel
            await quarantine(self.broker.redis, self.kernel.keys, f"{channel} {digest(data)}", data, str(exc))
            return
        if message.target_nodes and not {self.node_id, self.node_name} & set(message.target_nodes):
            return
        details = await self.kernel.broadcast(message, self)
        if message.message_id:
            # No plugin answered: nobody here knows the command (a typo, or a plugin this spore lacks).
            known = bool(details)
            detail = "; ".join(details) if known else (
                f"unknown command {message.command!r}: no plugin on this spore handles it "
                "(built in: PING, PAUSE, RESUME, SHUTDOWN)"
            )
            with contextlib.suppress(Exception):
                await self.broker.send_reply(
                    BroadcastReply(
                        message_id=message.message_id,
                        node_id=self.node_id,
                        node_name=self.node_name,
                        command=message.command,
                        ok=known and not any(d.startswith(REFUSALS) for d in details),
                        detail=detail,
                    )
                )
        if self.paused is False and self.worker is not None:
            self.worker.wake()
        await self._beat()
