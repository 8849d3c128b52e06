"""The seed's ``MessageBroker``: task records, priorities, dependencies and waiting, over a pluggable engine.

Task state lives in Redis as JSON (``{prefix}:task:{id}``) so every process sees the same truth. How a
placed task's job travels to a spore is the engine's business (:mod:`hive_framework.broker.engine`); the
engine in force is the one ``HIVE_BROKER`` names (``streams`` by default, ``arq`` selectable).
"""

from __future__ import annotations

import functools
import graphlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import wire
from ..connection import confirm_durable, redis_client
from ..counters import ADD_COUNTERS, aside_key, final_deltas
from ..embedded import unreachable
from ..errors import BrokerNotConnected, InvalidTask, WaitTimeout, WireError
from ..keys import read_task
from ..models import NodeInfo, TaskMessage, TaskProgress, TaskStatus, utcnow
from ..redisutil import another_type, awaited, raise_if_cancelling, text, texts
from .batch import Batches
from .cluster import ClusterMixin
from .engine import Delivery, Engine, Guard, Previous
from .placement import UNSERVED, TypeView, unserved_key, unserved_reason
from .poison import quarantine
from .records import WAITER_MARK_TTL_MS, add_to_pipeline, status_commands
from .recovery import RecoveryMixin
from .specs import TaskSpec, build_message, check_headers, check_key

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

    from ..kernel import Kernel

logger = logging.getLogger(__name__)

_FAILED_STATES = (TaskStatus.FAILED, TaskStatus.CANCELLED)
#: Tasks :meth:`MessageBroker.forget_tasks` checks and deletes in one script call.
FORGET_CHUNK = 500


class MessageBroker(ClusterMixin, RecoveryMixin):
    """The seed's broker. ``MessageBroker()`` reads settings from the environment and uses the engine
    ``HIVE_BROKER`` names; ``MessageBroker(kernel, engine=...)`` takes an engine explicitly."""

    def __init__(
        self, kernel: Kernel | None = None, *, redis: Redis | None = None, engine: Engine | None = None
    ) -> None:
        if kernel is None:
            from ..kernel import Kernel

            kernel = Kernel()
        self.kernel = kernel
        self.config = kernel.config
        self.keys = kernel.keys
        self.engine = engine if engine is not None else kernel.create_engine()
        self.engine.attach(self)
        self._redis = redis
        self._owns_redis = redis is None
        self._type_view: TypeView | None = None
        self._batches: Batches | None = None

    # --- connection ------------------------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise BrokerNotConnected("the broker is not connected: call 'await broker.connect()' first")
        return self._redis

    @property
    def is_connected(self) -> bool:
        return self._redis is not None

    async def connect(self) -> None:
        """Open the Redis connection and check that it answers."""
        if self._redis is None:
            # A read timeout, so a connection to a Redis cut off without a reset (a partition) fails instead of
            # hanging; every blocking command the hive sends waits at most 5 s at a time (WAIT: its own timeout).
            self._redis = redis_client(
                self.config, connect_timeout=5, socket_timeout=max(30.0, self.config.redis_wait_timeout + 5),
                keepalive=True,
            )
            self._owns_redis = True
        try:
            await self._redis.ping()
        except (RedisConnectionError, RedisTimeoutError, RedisResponseError, OSError) as exc:
            await self.disconnect()
            raise unreachable(exc, self.config.safe_redis_url()) from exc

    async def disconnect(self) -> None:
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()
        self._redis = None

    async def __aenter__(self) -> MessageBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # --- enqueueing ------------------------------------------------------------------------------------

    async def enqueue_task(
        self,
        task_type: str,
        payload: dict[str, Any] | None = None,
        priority: int | str | None = None,
        task_id: str | None = None,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        requirements: dict[str, Any] | None = None,
        node: str | None = None,
        job_id: str | None = None,
        depends_on: Sequence[str] | None = None,
        wait_timeout: float | None = None,
        allow_unknown: bool = False,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float | str | None = None,
        eta: datetime | str | None = None,
    ) -> str:
        """Validate and enqueue one task; returns its id. Nothing is stored when validation fails.

        ``priority`` is ``"high_priority"``, ``"background"`` (the default, unless the task type says
        otherwise) or a level 0-10. ``node`` pins the task to one spore. A type this process has not imported
        is enqueued by name with the options its spores advertise; one no spore ever advertised needs
        ``allow_unknown`` (so a typo is caught). ``wait_timeout``: how long the task may wait for an online
        spore serving its type before it fails (default: its type's, else no limit). ``key``: an idempotency
        key; a submit with a key seen in the last ``HIVE_IDEMPOTENCY_WINDOW`` seconds enqueues nothing and
        returns the task that key first made (atomic across clients). ``headers``: text metadata carried
        with the task (``before_enqueue`` impls may add to them). ``delay`` (seconds, or ``"30s"``, ``"5m"``,
        ``"1h"``) or ``eta`` (a timezone-aware datetime): the task is stored at once, as ``scheduled``, and
        reaches its queue when due.
        """
        spec = TaskSpec(
            task_type=task_type, payload=payload, priority=priority, task_id=task_id, timeout=timeout,
            max_retries=max_retries, requirements=requirements, node=node, job_id=job_id, depends_on=depends_on,
            wait_timeout=wait_timeout, allow_unknown=allow_unknown, key=key, headers=headers, delay=delay, eta=eta,
        )
        (task_id_out,) = await self.enqueue_many([spec])
        return task_id_out

    async def enqueue_many(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Validate every spec first, then enqueue them all in one pipelined transaction.

        A spec with ``depends_on`` waits (status ``waiting``) until all those tasks completed; a
        dependency that failed or was cancelled fails it. Dependencies may point into the same batch
        (with explicit ``task_id``s); a cycle is refused. A spec whose idempotency ``key`` is held enqueues
        nothing: its place in the answer holds the id of the task the key made.
        """
        view = await self.type_view()
        messages = [build_message(self.kernel, spec, view.advertised) for spec in specs]
        keyed = {i: check_key(spec.key) for i, spec in enumerate(specs) if spec.key is not None}
        if any(m.requirements and not s.node for m, s in zip(messages, specs, strict=True)):
            view = await self.type_view(fresh=True)
        nodes = view.nodes
        explicit = [m.task_id for m, s in zip(messages, specs, strict=True) if s.task_id]
        if len(set(explicit)) != len(explicit):
            raise InvalidTask("the batch names the same task_id twice")
        if explicit:
            exists = await self.redis.exists(*[self.keys.task(t) for t in explicit])
            if exists:
                raise InvalidTask(f"a task with one of the ids {explicit[:5]} already exists; ids must be new")
        deps = await self._check_dependencies(messages)
        answer = [m.task_id for m in messages]
        held: list[tuple[str, str]] = []
        if keyed:
            held = await self._hold_keys({i: (key, messages[i].task_id) for i, key in keyed.items()}, answer)
            kept = [i for i, m in enumerate(messages) if answer[i] == m.task_id]
            specs, messages = [specs[i] for i in kept], [messages[i] for i in kept]
        if self.kernel.lifecycle["before_enqueue"]:  # only the tasks really enqueued (not ones a key answered)
            for message in messages:
                await self._before_enqueue(message)
        for message, spec in zip(messages, specs, strict=True):
            self._place(message, nodes, node=spec.node, served=view.served)
        waiting: list[TaskMessage] = []
        try:
            await self._write_new(messages, deps, waiting)
        except BaseException:
            if held:  # the tasks were not stored: the keys must not keep pointing at them
                await self._release_keys(held)
            raise
        if messages:
            await confirm_durable(self.redis, self.config, f"{len(messages)} task(s) from {messages[0].task_id}")
        # A dependency may have finished between the status check and the write above: settle it now.
        for message in waiting:
            for dep_message in await self.get_tasks(message.depends_on):
                if dep_message is not None and dep_message.is_terminal:
                    await self.release_dependents(dep_message, only=message.task_id)
        return answer

    async def _hold_keys(self, wanted: dict[int, tuple[str, str]], answer: list[str]) -> list[tuple[str, str]]:
        """Take each idempotency key for its new task, atomically; a key already held puts its task in ``answer``.

        Returns the (key, task id) pairs taken, to release should the write fail.
        """
        order = list(wanted)
        replies = await self._hold_script(
            keys=[self.keys.idempotency(wanted[i][0]) for i in order],
            args=[int(self.config.idempotency_window * 1000), *(wanted[i][1] for i in order)],
        )
        taken: list[tuple[str, str]] = []
        for i, reply in zip(order, replies, strict=True):
            key, task_id = wanted[i]
            if reply:
                answer[i] = text(reply)
            else:
                taken.append((key, task_id))
        return taken

    async def _release_keys(self, held: list[tuple[str, str]]) -> None:
        for key, task_id in held:
            await self._release_script(keys=[self.keys.idempotency(key)], args=[task_id])

    @functools.cached_property
    def _hold_script(self) -> Any:
        # SET NX each key to its task id; reply per key: the id already held, or false when taken now
        # (a key twice in one batch: the second gets the first's id).
        return self.redis.register_script("""
local held = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 1]
  if redis.call('SET', key, id, 'NX', 'PX', ARGV[1]) then held[i] = false
  else held[i] = redis.call('GET', key) end
end
return held
""")

    @functools.cached_property
    def _release_script(self) -> Any:
        return self.redis.register_script(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        )

    async def _write_new(self, messages: list[TaskMessage], deps: dict[str, TaskStatus],
                         waiting: list[TaskMessage]) -> None:
        """Store and dispatch new tasks (or mark them waiting on dependencies) in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for message in messages:
                failed_dep = next((d for d in message.depends_on if deps.get(d) in _FAILED_STATES), None)
                unfinished = [d for d in message.depends_on if deps.get(d) != TaskStatus.COMPLETED]
                if failed_dep is not None:
                    message.status = TaskStatus.FAILED
                    message.completed_at = utcnow()
                    message.error = f"dependency {failed_dep} {deps[failed_dep]}"
                    self._status_ops(pipe, message, previous=None)
                elif unfinished:
                    message.status = TaskStatus.WAITING
                    self._status_ops(pipe, message, previous=None)
                    pipe.sadd(self.keys.waiting_on(message.task_id), *unfinished)
                    for dep in unfinished:
                        pipe.sadd(self.keys.dependents(dep), message.task_id)
                    waiting.append(message)
                else:
                    self._dispatch_ops(pipe, message, previous=None)
            if self._batches is None or self._batches.redis is not self.redis:
                self._batches = Batches(self.redis)
            await self._batches.execute(pipe)

    async def _before_enqueue(self, message: TaskMessage) -> None:
        """Run the ``before_enqueue`` hooks, then drop header entries that are not text to text (with a warning);
        headers grown past the size limit are put back as they were before the hooks."""
        before = dict(message.headers)
        await self.kernel.run_lifecycle("before_enqueue", task=message, config=self.config)
        headers: Any = message.headers
        if not isinstance(headers, dict):
            logger.warning("before_enqueue hooks replaced the headers of task %s with %s; undone",
                           message.task_id, type(headers).__name__)
            message.headers = before
            return
        kept = {k: v for k, v in headers.items() if isinstance(k, str) and k and isinstance(v, str)}
        if len(kept) != len(headers):
            logger.warning("before_enqueue hooks gave task %s headers that are not text; dropped: %s",
                           message.task_id, sorted(map(repr, set(headers) - set(kept))))
        try:
            message.headers = check_headers(kept)
        except InvalidTask as exc:
            logger.warning("before_enqueue hooks left task %s with headers it cannot carry (%s); undone",
                           message.task_id, exc)
            message.headers = before

    async def _check_dependencies(self, messages: list[TaskMessage]) -> dict[str, TaskStatus]:
        """Statuses of every dependency named; unknown ids and cycles are :class:`InvalidTask`."""
        in_batch = {m.task_id for m in messages}
        graph = {m.task_id: set(m.depends_on) for m in messages if m.depends_on}
        if not graph:
            return {}
        try:
            tuple(graphlib.TopologicalSorter(graph).static_order())
        except graphlib.CycleError as exc:
            raise InvalidTask(f"dependency cycle: {' -> '.join(map(str, exc.args[1]))}") from None
        outside = sorted({d for deps in graph.values() for d in deps} - in_batch)
        statuses: dict[str, TaskStatus] = {m.task_id: m.status for m in messages}
        for dep_id, dep in zip(outside, await self.get_tasks(outside), strict=True):
            if dep is None:
                raise InvalidTask(f"depends_on names {dep_id!r}, which is not a known task")
            statuses[dep_id] = dep.status
        return statuses

    async def release_dependents(
        self, message: TaskMessage, *, only: str | None = None, dependents: list[str] | None = None
    ) -> None:
        """After ``message`` became final: start dependents whose last dependency it was, or fail them."""
        if only:
            dependents = [only]
        elif dependents is None:
            dependents = texts(await awaited(self.redis.smembers(self.keys.dependents(message.task_id))))
        for dependent_id in dependents:
            if message.status == TaskStatus.COMPLETED:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.srem(self.keys.waiting_on(dependent_id), message.task_id)
                    pipe.scard(self.keys.waiting_on(dependent_id))
                    removed, left = await pipe.execute()
                if not (removed and left == 0):
                    continue
            dependent = await self.get_task_status(dependent_id)
            if dependent is None or dependent.status != TaskStatus.WAITING:
                continue
            if message.status == TaskStatus.COMPLETED:
                await self.dispatch(dependent)
            else:
                dependent.status = TaskStatus.FAILED
                dependent.completed_at = utcnow()
                dependent.error = f"dependency {message.task_id} {message.status.value}: {message.error}"
                await self.save_task(dependent)

    async def type_view(self, *, fresh: bool = False) -> TypeView:
        """The online spores, the types they serve and every advertised type's options (cached for a second,
        unless ``fresh``: placing a task with requirements needs the nodes as they are now)."""
        view = self._type_view
        if fresh or view is None or not view.fresh:
            view = self._type_view = await TypeView.read(self.redis, self.keys, await self.get_nodes())
        return view

    def _place(
        self, message: TaskMessage, nodes: list[NodeInfo], *, node: str | None = None, served: set[str] | None = None
    ) -> None:
        """Choose the queue: ``node``'s own, the balancer's pick for tasks with requirements, or the shared
        queue of the task's type and priority (also when the balancer returns ``None``). A task with
        requirements that no online spore serving its type meets gets no queue (``""``): it is parked.
        A task queued for a type none of the online spores (``served``) serves gets the reason why it waits.
        """
        message.reason = None
        if node is None and message.requirements:
            capable = [n for n in nodes if message.task_type in n.task_types]
            if not self.kernel.eligible_nodes(message, capable):
                message.queue = ""
                message.assigned_node = None
                message.reason = (
                    f"waiting for an online node that serves `{message.task_type}` and meets {message.requirements}"
                )
                return
            node = self.kernel.route(message, capable)
        message.queue = self.engine.queue_for(message.priority, node, message.task_type)
        message.assigned_node = node
        if node is None and served is not None and message.task_type not in served:
            message.reason = unserved_reason(message.task_type)

    def _queue_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None:
        """Store ``message`` as pending and put its job on its queue."""
        self._status_ops(pipe, message, previous)
        self.engine.enqueue_ops(pipe, message)

    def _dispatch_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None:
        """Queue a placed task, or park it (status ``waiting``) until a fitting node comes online. A placed task
        whose ``eta`` is ahead waits as ``scheduled``: its engine puts its job on its queue when it is due."""
        if message.queue:
            unserved = (message.reason or "").startswith(UNSERVED)
            since = time.time()
            if message.eta is not None and message.not_due():
                message.status = TaskStatus.SCHEDULED
                self._status_ops(pipe, message, previous)
                self.engine.schedule_ops(pipe, message)
                since = message.eta.timestamp()  # a wait for a spore of its type starts when it is due
            else:
                message.status = TaskStatus.PENDING
                self._queue_ops(pipe, message, previous)
            if unserved:
                pipe.zadd(unserved_key(self.keys), {message.task_id: since})
            if previous is not None:
                pipe.zrem(self.keys.unrouted, message.task_id)
        else:
            message.status = TaskStatus.WAITING
            self._status_ops(pipe, message, previous)
            pipe.zadd(self.keys.unrouted, {message.task_id: time.time()})

    async def dispatch(self, message: TaskMessage, *, node: str | None = None) -> None:
        """Place and queue (or park) one task that is not on any queue now."""
        view = await self.type_view(fresh=bool(message.requirements) and node is None)
        self._place(message, view.nodes, node=node, served=view.served)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._dispatch_ops(pipe, message)
            await pipe.execute()

    def _status_ops(self, pipe: Pipeline, message: TaskMessage, previous: Previous = "unknown") -> None:
        """Queue the status write of ``message``; one made final here (not by a spore's attempt, whose hooks
        count it) is counted in the same transaction."""
        add_to_pipeline(pipe, status_commands(self.keys, self.config, message, previous))
        if message.is_terminal:
            # one script, not HINCRBYs: a counters key a hand or a bug made unreadable must not fail the write
            flat: list[Any] = [part for pair in final_deltas(message) for part in pair]
            pipe.eval(ADD_COUNTERS, 2, self.keys.counters, aside_key(self.keys.counters), *flat)

    # --- task state ------------------------------------------------------------------------------------

    async def get_task_status(self, task_id: str) -> TaskMessage | None:
        """The task as stored in Redis (seen the same from every process), or ``None``."""
        (message,) = await self.get_tasks([task_id])
        return message

    async def get_task_with_progress(self, task_id: str) -> TaskMessage | None:
        """The task as stored, with the latest progress its handler reported (one round trip for both)."""
        raw, raw_progress = await self.redis.mget([self.keys.task(task_id), self.keys.progress(task_id)])
        if raw is None:
            return None
        try:
            message = read_task(task_id, raw)
        except WireError:
            return await self.get_task_status(task_id)  # quarantines the poison record, reads as None
        if raw_progress is not None:
            try:
                live = wire.loads(raw_progress, TaskProgress)
            except WireError as exc:
                logger.warning("task %s: ignoring unreadable progress: %s", task_id, exc)
            else:
                # The record carries the value at the last status write; the live key is newer while it runs.
                if message.progress is None or live.updated_at > message.progress.updated_at:
                    message.progress = live
        return message

    async def get_tasks(
        self, task_ids: Iterable[str], raws: Sequence[bytes | str | None] | None = None
    ) -> list[TaskMessage | None]:
        """The stored tasks (``None`` where there is none), read now or decoded from ``raws`` read already. A
        record that does not decode is quarantined (:mod:`.poison`: raw bytes and reason kept, the key and its
        index entries removed) and reads as ``None``: one poison record never fails a spore's batch, a sweep
        or an API call."""
        ids = list(task_ids)
        if not ids:
            return []
        if raws is None:
            raws = await self.redis.mget([self.keys.task(t) for t in ids])
        out: list[TaskMessage | None] = []
        for task_id, raw in zip(ids, raws, strict=True):
            try:
                out.append(None if raw is None else read_task(task_id, raw))
            except WireError as exc:
                await self.quarantine_task(task_id, raw, str(exc))
                out.append(None)
        return out

    async def quarantine_task(self, task_id: str, raw: Any, reason: str) -> None:
        """Move an undecodable task record to the dead records and drop it from every index."""
        cleanup: list[tuple[Any, ...]] = [("DEL", self.keys.task(task_id))]
        cleanup += [("ZREM", self.keys.status_index(s), task_id) for s in TaskStatus]
        cleanup += [("ZREM", self.keys.unrouted, task_id), ("ZREM", self.keys.dead_letters, task_id),
                    ("ZREM", unserved_key(self.keys), task_id)]
        await quarantine(self.redis, self.keys, self.keys.task(task_id), raw, reason, cleanup)

    async def save_task(self, message: TaskMessage, previous: Previous = "unknown") -> None:
        """Store ``message`` and move it to its status index in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._status_ops(pipe, message, previous)
            if message.is_terminal:
                pipe.smembers(self.keys.dependents(message.task_id))
            results = await pipe.execute()
        if message.is_terminal and results[-1]:
            await self.release_dependents(message, dependents=texts(results[-1]))

    async def save_unless_cancelled(
        self, message: TaskMessage, *, previous: Previous = "unknown", delivery: Delivery | None = None
    ) -> bool:
        """Record a spore's progress on a task, unless it was cancelled meanwhile (the cancellation stands)."""
        (saved,) = await self.record_attempts([(message, previous, delivery)])
        return saved

    async def record_attempts(self, items: Sequence[tuple[TaskMessage, Previous, Guard]]) -> list[bool]:
        """Record several spores' progress through the engine (each unless cancelled); a flag per item.

        Dependents of tasks that became final are started (or failed) afterwards.
        """
        if not items:
            return []
        outcomes = await self.engine.record(items)
        for (message, _, _), dependents in zip(items, outcomes, strict=True):
            if dependents is None:
                logger.info("task %s was cancelled while it ran, or a newer attempt owns it; its outcome is dropped",
                            message.task_id)
            elif dependents and message.is_terminal:
                await self.release_dependents(message, dependents=dependents)
        return [d is not None for d in outcomes]

    async def update_task_status(
        self, task_id: str, status: TaskStatus | str, result: Any = None, error: str | None = None
    ) -> TaskMessage | None:
        """Set a task's status (and result or error) by hand, as the seed's spores did; ``None`` if unknown."""
        message = await self.get_task_status(task_id)
        if message is None:
            return None
        try:
            message.status = TaskStatus(status)
        except ValueError:
            raise InvalidTask(f"bad status {status!r}; use one of {[s.value for s in TaskStatus]}") from None
        if result is not None:
            wire.json_size(result)
            message.result = result
        if error is not None:
            message.error = error
        if message.status == TaskStatus.RUNNING and message.started_at is None:
            message.started_at = utcnow()
        if message.is_terminal:
            message.completed_at = utcnow()
        await self.save_task(message)
        return message

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> TaskMessage:
        """Block until the task is completed, failed or cancelled; no polling of the task key.

        Raises :class:`WaitTimeout` when ``timeout`` seconds pass first (the task goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done_key = self.keys.done(task_id)
        while True:
            raise_if_cancelling()
            # The marker lands before the read: a task finishing after the read sees it and pushes the done list.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.waiters(task_id), b"1", px=WAITER_MARK_TTL_MS)
                pipe.get(self.keys.task(task_id))
                _, raw = await pipe.execute()
            (message,) = await self.get_tasks([task_id], [raw])
            if message is None:
                raise InvalidTask(f"no task with id {task_id!r}")
            if message.is_terminal:
                return message
            remaining = 5.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} still {message.status.value} after {timeout}s")
            # Rotating the list onto itself is a blocking peek: the marker stays for every other waiter.
            wait = min(max(remaining, 0.01), 5.0)
            try:
                await self.redis.execute_command("BLMOVE", done_key, done_key, "LEFT", "LEFT", wait)
            except RedisResponseError as exc:
                if not another_type(exc):
                    raise
                # Not a list (planted, or a bug): it only ever wakes waiters, so it goes, and the record is
                # read again at once (a save that pushed meanwhile is seen there).
                await self.redis.delete(done_key)

    async def iter_job(
        self, job_id: str, task_ids: Sequence[str], timeout: float | None = None
    ) -> AsyncIterator[TaskMessage]:
        """Yield each task of a map-reduce job once, as it becomes final, until all did or ``timeout`` passed.

        Reads the job's event stream with a blocking XREAD, so waiting costs Redis work in proportion
        to completions, not to the number of pending tasks.
        """
        wanted = set(task_ids)
        seen: set[str] = set()
        key = self.keys.job_events(job_id)
        last = "0-0"
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(seen) < len(wanted):
            remaining = 5.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            response = await self.redis.xread({key: last}, count=1000, block=max(int(min(remaining, 5.0) * 1000), 1))
            fresh: list[str] = []
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    task_id = text(fields.get(b"task_id", fields.get("task_id")))
                    if task_id in wanted and task_id not in seen and task_id not in fresh:
                        fresh.append(task_id)
            for message in await self.get_tasks(fresh):
                if message is not None and message.is_terminal and message.task_id not in seen:
                    seen.add(message.task_id)
                    yield message

    async def record_job(self, job_id: str, *, task_type: str, tasks: int, items: int, description: str = "") -> None:
        """Note a map-reduce job (kept ``HIVE_RESULT_TTL``) so the monitor can list it with its progress."""
        now = time.time()
        ttl_ms = int(self.config.result_ttl * 1000)
        info = {"task_type": task_type, "tasks": tasks, "items": items, "description": description[:500],
                "created_at": now}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.job_info(job_id), mapping=info)
            pipe.pexpire(self.keys.job_info(job_id), ttl_ms)
            pipe.zadd(self.keys.jobs, {job_id: now})
            pipe.zremrangebyscore(self.keys.jobs, "-inf", now - self.config.result_ttl)
            await pipe.execute()

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a task that has not finished; a running one finishes its attempt but is not retried."""
        message = await self.get_task_status(task_id)
        if message is None or message.is_terminal:
            return False
        await self._drop_engine_job(message)
        await self.redis.set(self.keys.cancelled(task_id), b"1", px=int(self.config.result_ttl * 1000))
        message.status = TaskStatus.CANCELLED
        message.completed_at = utcnow()
        message.error = message.error or "cancelled"
        await self.save_task(message)
        return True

    async def forget_tasks(self, task_ids: Sequence[str]) -> int:
        """Delete completed tasks' records once their results were collected; how many went.

        What else a task keeps goes with its record (progress, ``done`` list, its entry in the completed
        index). Any other task is kept as it is: a live one, a failed or cancelled one (a dead letter for
        ``hive dead``), and one that other tasks depend on (they read its result when they run). The script
        that deletes (one per chunk) checks each record itself, so only one that is completed then goes.
        """
        gone = 0
        keys = self.keys
        for start in range(0, len(task_ids), FORGET_CHUNK):
            chunk = task_ids[start:start + FORGET_CHUNK]
            per_task = [(keys.task(t), keys.dependents(t), keys.progress(t), keys.done(t)) for t in chunk]
            gone += int(await self._forget_script(
                keys=[keys.status_index(TaskStatus.COMPLETED), *(k for group in per_task for k in group)],
                args=[TaskStatus.COMPLETED.value, *chunk],
            ))
        return gone

    @functools.cached_property
    def _forget_script(self) -> Any:
        # KEYS[1] the completed index, then per task: record, dependents set, progress, done list; ARGV[1] the
        # completed status, then the task ids. A record of another type or that does not decode stays.
        return self.redis.register_script("""
local gone = 0
for i = 2, #ARGV do
  local base = 4 * (i - 2) + 1
  local raw = redis.pcall('GET', KEYS[base + 1])
  if type(raw) == 'string' and redis.call('EXISTS', KEYS[base + 2]) == 0 then
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' and rec['status'] == ARGV[1] then
      redis.call('DEL', KEYS[base + 1], KEYS[base + 3], KEYS[base + 4])
      redis.call('ZREM', KEYS[1], ARGV[i])
      gone = gone + 1
    end
  end
end
return gone
""")

    async def retry_task(self, task_id: str) -> bool:
        """Run a task again from scratch under a fresh engine job id (an engine never drops it as a duplicate)."""
        message = await self.get_task_status(task_id)
        if message is None or message.status == TaskStatus.COMPLETED:
            return False
        await self._drop_engine_job(message)
        message.engine_job_id = f"{task_id}.r{uuid.uuid4().hex[:8]}"
        message.status = TaskStatus.PENDING
        message.attempt = 0
        message.error = None
        message.result = None
        message.started_at = message.completed_at = None
        view = await self.type_view(fresh=bool(message.requirements))
        self._place(message, view.nodes, served=view.served)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.done(task_id), self.keys.cancelled(task_id))
            self._dispatch_ops(pipe, message)
            await pipe.execute()
        return True

    async def _drop_engine_job(self, message: TaskMessage) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.engine.drop_ops(pipe, message)
            pipe.zrem(self.keys.unrouted, message.task_id)
            pipe.zrem(unserved_key(self.keys), message.task_id)
            await pipe.execute()
