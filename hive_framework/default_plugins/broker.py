"""Default broker (Redis + ARQ): the seed's ``MessageBroker``.

Task state lives in Redis as JSON (``{prefix}:task:{id}``) so every process sees the same truth; the
job that carries a task travels through ARQ's sorted-set queues named by config. Priorities are kept two
ways: ``high_priority``-class tasks go to the high queue, which spores drain first, and within a queue a
higher level gets a lower ARQ score, so it is read first.
"""

from __future__ import annotations

import graphlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from .. import wire
from ..errors import BrokerNotConnected, InvalidTask, RedisUnavailable, WaitTimeout, WireError
from ..hookspecs import hookimpl
from ..models import (
    HIGH_PRIORITY_LEVEL,
    PRIORITY_NAMES,
    BroadcastMessage,
    BroadcastReply,
    NodeInfo,
    TaskMessage,
    TaskStatus,
    utcnow,
)

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..spore import Spore

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: The one ARQ function every hive job calls; its only argument is the task id.
RUN_FUNCTION = "hive.run"
#: Score distance between two adjacent priority levels inside one queue (about 31 years in ms).
PRIORITY_STEP_MS = 10**12
_FAILED_STATES = (TaskStatus.FAILED, TaskStatus.CANCELLED)
#: How long a broadcast's replies are kept.
REPLY_TTL_S = 60


def _awaited(value: Awaitable[T] | T) -> Awaitable[T]:
    """A redis-py command typed as awaitable: its stubs say ``Awaitable[T] | T``; on ``redis.asyncio`` it always is."""
    return cast("Awaitable[T]", value)


async def _blpop(redis: Redis, key: str, timeout: float) -> tuple[bytes, bytes] | None:
    """``BLPOP key timeout`` with a fractional timeout in seconds (Redis 6+ takes one; redis-py's stubs say int)."""
    popped: tuple[bytes, bytes] | None = await redis.execute_command("BLPOP", key, timeout)
    return popped


async def _peek(redis: Redis, key: str, timeout: float) -> bytes | None:
    """Wait up to ``timeout`` seconds (fractional) for ``key``'s first element, leaving it in place."""
    seen: bytes | None = await redis.execute_command("BLMOVE", key, key, "LEFT", "LEFT", timeout)
    return seen


def _text(values: Iterable[bytes | str]) -> list[str]:
    """Members or keys read from Redis, as ``str``."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def parse_priority(priority: int | str) -> int:
    """A priority name (``high_priority``, ``background``...) or a level 0-10 as an int; else InvalidTask."""
    if isinstance(priority, bool):
        raise InvalidTask(f"bad priority {priority!r}: use one of {sorted(PRIORITY_NAMES)} or 0-10")
    if isinstance(priority, int):
        level = priority
    elif isinstance(priority, str) and priority.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[priority.strip().lower()]
    elif isinstance(priority, str) and _is_level(priority):
        level = int(priority)
    else:
        raise InvalidTask(f"bad priority {priority!r}: use one of {sorted(PRIORITY_NAMES)} or 0-10")
    if not 0 <= level <= 10:
        raise InvalidTask(f"bad priority {priority!r}: levels run from 0 (lowest) to 10 (highest)")
    return level


def _is_level(text: str) -> bool:
    """An optional '-' then a few ASCII digits (``str.isdigit`` alone lets '²' and '--5' reach ``int``)."""
    digits = text.strip().removeprefix("-")
    return digits.isascii() and digits.isdigit() and len(digits) <= 20


def job_serializer(data: dict[str, Any]) -> bytes:
    """ARQ job/result serializer: JSON, with exceptions turned into data (never pickle)."""
    return json.dumps(data, default=_encode_extra, separators=(",", ":")).encode()


def job_deserializer(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("an ARQ job must be a JSON object")
    return value


def _encode_extra(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"error_type": type(value).__name__, "message": str(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON data")


@attrs.frozen(kw_only=True)
class TaskSpec:
    """One task to enqueue in a batch (:meth:`MessageBroker.enqueue_many`)."""

    task_type: str
    payload: dict[str, Any] | None = None
    priority: int | str | None = None
    task_id: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    requirements: dict[str, Any] | None = None
    node: str | None = None
    job_id: str | None = None
    depends_on: Sequence[str] | None = None
    #: Payloads run one after another by a single task (map-reduce ``chunk_size``).
    chunk: Sequence[dict[str, Any]] | None = None


class MessageBroker:
    """Redis + ARQ broker with the seed's API. ``MessageBroker()`` reads settings from the environment."""

    def __new__(cls, kernel: Kernel | None = None, *, redis: Redis | None = None) -> MessageBroker:
        """``MessageBroker(...)``, the seed's constructor, builds the broker ``HIVE_BROKER`` selects."""
        if cls is MessageBroker:
            if kernel is None:
                from ..kernel import Kernel

                kernel = Kernel()
            if kernel.config.broker != "arq":
                chosen = kernel.create_broker()
                if redis is not None and isinstance(chosen, MessageBroker):
                    chosen._redis, chosen._owns_redis = redis, False
                return chosen
            instance = super().__new__(cls)
            MessageBroker.__init__(instance, kernel, redis=redis)
            return instance
        return super().__new__(cls)

    def __init__(self, kernel: Kernel | None = None, *, redis: Redis | None = None) -> None:
        if getattr(self, "kernel", None) is not None:
            return  # built by __new__ already
        if kernel is None:
            from ..kernel import Kernel

            kernel = Kernel()
        self.kernel = kernel
        self.config = kernel.config
        self.keys = kernel.keys
        self._redis = redis
        self._owns_redis = redis is None

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
            self._redis = Redis.from_url(self.config.effective_redis_url(), socket_connect_timeout=5)
            self._owns_redis = True
        try:
            await self._redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await self.disconnect()
            raise RedisUnavailable(
                f"no Redis answers at {self.config.safe_redis_url()} ({exc}); start one, set REDIS_URL, "
                "or run 'hive up' for an embedded one"
            ) from exc

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
    ) -> str:
        """Validate and enqueue one task; returns its id. Nothing is stored when validation fails.

        ``priority`` is ``"high_priority"``, ``"background"`` (the default, unless the task type says
        otherwise) or a level 0-10. ``node`` pins the task to one spore.
        """
        spec = TaskSpec(
            task_type=task_type,
            payload=payload,
            priority=priority,
            task_id=task_id,
            timeout=timeout,
            max_retries=max_retries,
            requirements=requirements,
            node=node,
            job_id=job_id,
            depends_on=depends_on,
        )
        (task_id_out,) = await self.enqueue_many([spec])
        return task_id_out

    async def enqueue_many(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Validate every spec first, then enqueue them all in one pipelined transaction.

        A spec with ``depends_on`` waits (status ``waiting``) until all those tasks completed; a
        dependency that failed or was cancelled fails it. Dependencies may point into the same batch
        (with explicit ``task_id``s); a cycle is refused.
        """
        local = self.kernel.task_types
        remote_types = await self._remote_task_types() if any(s.task_type not in local for s in specs) else set()
        messages = [self._build(spec, remote_types) for spec in specs]
        needs_nodes = any(m.requirements and not s.node for m, s in zip(messages, specs, strict=True))
        nodes = await self.get_nodes() if needs_nodes else []
        explicit = [m.task_id for m, s in zip(messages, specs, strict=True) if s.task_id]
        if len(set(explicit)) != len(explicit):
            raise InvalidTask("the batch names the same task_id twice")
        if explicit:
            exists = await self.redis.exists(*[self.keys.task(t) for t in explicit])
            if exists:
                raise InvalidTask(f"a task with one of the ids {explicit[:5]} already exists; ids must be new")
        deps = await self._check_dependencies(messages)
        for message, spec in zip(messages, specs, strict=True):
            self._place(message, nodes, node=spec.node)
        waiting: list[TaskMessage] = []
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
            await pipe.execute()
        # A dependency may have finished between the status check and the write above: settle it now.
        for message in waiting:
            for dep_message in await self.get_tasks(message.depends_on):
                if dep_message is not None and dep_message.is_terminal:
                    await self._release_dependents(dep_message, only=message.task_id)
        return [m.task_id for m in messages]

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

    async def _release_dependents(
        self, message: TaskMessage, *, only: str | None = None, dependents: list[str] | None = None
    ) -> None:
        """After ``message`` became final: start dependents whose last dependency it was, or fail them."""
        if only:
            dependents = [only]
        elif dependents is None:
            dependents = _text(await _awaited(self.redis.smembers(self.keys.dependents(message.task_id))))
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

    def _place(self, message: TaskMessage, nodes: list[NodeInfo], *, node: str | None = None) -> None:
        """Choose the queue: ``node``'s own, the balancer's pick for tasks with requirements, or the shared
        queue of the task's priority. A task no online node can run gets no queue (``""``): it is parked.
        """
        message.reason = None
        if node is None and message.requirements:
            node = self.kernel.route(message, nodes)
            if node is None:
                message.queue = ""
                message.assigned_node = None
                message.reason = f"waiting for an online node that meets {message.requirements}"
                return
        message.queue = self._queue_for(message.priority, node)
        message.assigned_node = node

    def _dispatch_ops(self, pipe: Any, message: TaskMessage, previous: TaskStatus | str | None = "unknown") -> None:
        """Queue a placed task, or park it (status ``waiting``) until a fitting node comes online."""
        if message.queue:
            message.status = TaskStatus.PENDING
            self._queue_ops(pipe, message, previous)
            if previous is not None:
                pipe.zrem(self.keys.unrouted, message.task_id)
        else:
            message.status = TaskStatus.WAITING
            self._status_ops(pipe, message, previous)
            pipe.zadd(self.keys.unrouted, {message.task_id: time.time()})

    async def dispatch(self, message: TaskMessage, *, node: str | None = None) -> None:
        """Place and queue (or park) one task that is not on any queue now."""
        nodes = await self.get_nodes() if message.requirements and node is None else []
        self._place(message, nodes, node=node)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._dispatch_ops(pipe, message)
            await pipe.execute()

    def _build(self, spec: TaskSpec, remote_types: set[str]) -> TaskMessage:
        if not isinstance(spec.task_type, str) or not spec.task_type:
            raise InvalidTask(f"task_type must be a non-empty string, got {spec.task_type!r}")
        task_type = self.kernel.get_task_type(spec.task_type, extra_known=remote_types)
        payload = {} if spec.payload is None else spec.payload
        if isinstance(payload, str | bytes):
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise InvalidTask(f"payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidTask(f"payload must be a JSON object (a dict), got {type(payload).__name__}")
        try:
            size = wire.json_size(payload)
        except WireError as exc:
            raise InvalidTask(f"payload is not JSON-serialisable: {exc}") from None
        chunk = None if spec.chunk is None else list(spec.chunk)
        if chunk is not None:
            if not chunk or not all(isinstance(p, dict) for p in chunk):
                raise InvalidTask("chunk must be a non-empty list of JSON objects")
            try:
                size += wire.json_size(chunk)
            except WireError as exc:
                raise InvalidTask(f"chunk is not JSON-serialisable: {exc}") from None
        if size > self.config.max_payload_bytes:
            raise InvalidTask(
                f"payload is {size} bytes, over the limit of {self.config.max_payload_bytes} "
                "(HIVE_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a reference"
            )
        default_priority = task_type.priority if task_type else "background"
        level = parse_priority(default_priority if spec.priority is None else spec.priority)
        timeout = spec.timeout if spec.timeout is not None else (task_type and task_type.timeout)
        timeout = float(timeout or self.config.task_timeout)
        if not timeout > 0:
            raise InvalidTask(f"timeout must be > 0 seconds, got {timeout!r}")
        retries = spec.max_retries if spec.max_retries is not None else (task_type and task_type.max_retries)
        retries = self.config.max_retries if retries is None else retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidTask(f"max_retries must be a whole number >= 0, got {retries!r}")
        requirements = dict(task_type.requirements) if task_type else {}
        requirements.update(spec.requirements or {})
        if spec.task_id is not None and (not isinstance(spec.task_id, str) or not spec.task_id.strip()):
            raise InvalidTask(f"task_id must be a non-empty string, got {spec.task_id!r}")
        depends_on = list(spec.depends_on or [])
        if isinstance(spec.depends_on, str) or not all(isinstance(d, str) and d for d in depends_on):
            raise InvalidTask(f"depends_on must be a list of task ids, got {spec.depends_on!r}")
        task_id = spec.task_id or uuid.uuid4().hex
        if task_id in depends_on:
            raise InvalidTask(f"task {task_id} cannot depend on itself")
        return TaskMessage(
            task_id=task_id,
            task_type=spec.task_type,
            payload=payload,
            priority=level,
            timeout=timeout,
            max_retries=retries,
            requirements=requirements,
            job_id=spec.job_id,
            depends_on=depends_on,
            chunk=chunk,
            engine_job_id=task_id,
        )

    def _queue_for(self, level: int, node: str | None) -> str:
        if node:
            return self.keys.node_queue(node)
        return self.keys.high_queue if level >= HIGH_PRIORITY_LEVEL else self.keys.background_queue

    def _queue_ops(self, pipe: Any, message: TaskMessage, previous: TaskStatus | str | None = "unknown") -> None:
        """Pipeline commands that store ``message`` as pending and put its ARQ job on its queue."""
        now_ms = int(time.time() * 1000)
        job = serialize_job(
            RUN_FUNCTION, (message.task_id,), {}, None, now_ms, serializer=job_serializer
        )
        ttl_ms = int(max(self.config.result_ttl, 86400) * 1000)
        self._status_ops(pipe, message, previous)
        pipe.psetex(job_key_prefix + message.engine_job_id, ttl_ms, job)
        pipe.zadd(message.queue, {message.engine_job_id: now_ms - message.priority * PRIORITY_STEP_MS})

    def _status_ops(self, pipe: Any, message: TaskMessage, previous: TaskStatus | str | None = "unknown") -> None:
        """Commands that store ``message`` and move it between status indexes.

        ``previous`` is the status it had, when the caller knows it (``None`` for a new task): then only
        that index is touched, instead of every other one.
        """
        now = time.time()
        data = wire.dumps(message)
        if message.is_terminal:
            ttl = int(self.config.result_ttl * 1000)
            pipe.psetex(self.keys.task(message.task_id), ttl, data)
            pipe.rpush(self.keys.done(message.task_id), message.status.value)
            pipe.pexpire(self.keys.done(message.task_id), ttl)
            if message.job_id:
                events = self.keys.job_events(message.job_id)
                pipe.xadd(events, {"task_id": message.task_id, "status": message.status.value})
                pipe.pexpire(events, ttl)
        else:
            pipe.set(self.keys.task(message.task_id), data)
        if previous == "unknown":
            for status in TaskStatus:
                if status != message.status:
                    pipe.zrem(self.keys.status_index(status), message.task_id)
        elif previous is not None and previous != message.status:
            pipe.zrem(self.keys.status_index(previous), message.task_id)
        pipe.zadd(self.keys.status_index(message.status), {message.task_id: now})
        if message.status == TaskStatus.FAILED:
            pipe.zadd(self.keys.dead_letters, {message.task_id: now})
        elif previous in ("unknown", TaskStatus.FAILED):
            pipe.zrem(self.keys.dead_letters, message.task_id)

    # --- task state ------------------------------------------------------------------------------------

    async def get_task_status(self, task_id: str) -> TaskMessage | None:
        """The task as stored in Redis (seen the same from every process), or ``None``."""
        raw = await self.redis.get(self.keys.task(task_id))
        return None if raw is None else wire.loads(raw, TaskMessage)

    async def get_tasks(self, task_ids: Iterable[str]) -> list[TaskMessage | None]:
        ids = list(task_ids)
        if not ids:
            return []
        raws = await self.redis.mget([self.keys.task(t) for t in ids])
        return [None if raw is None else wire.loads(raw, TaskMessage) for raw in raws]

    async def save_task(self, message: TaskMessage, previous: TaskStatus | str | None = "unknown") -> None:
        """Store ``message`` and move it to its status index in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._status_ops(pipe, message, previous)
            if message.is_terminal:
                pipe.smembers(self.keys.dependents(message.task_id))
            results = await pipe.execute()
        if message.is_terminal and results[-1]:
            await self._release_dependents(message, dependents=_text(results[-1]))

    async def settle(self, ack: Any) -> None:
        """Finish the engine's job for a task a spore skipped (ARQ: nothing, it settles its own jobs)."""

    async def save_unless_cancelled(
        self, message: TaskMessage, *, previous: TaskStatus | str | None = "unknown", ack: Any = None
    ) -> bool:
        """Record a spore's progress on a task, unless it was cancelled meanwhile (the cancellation stands).

        ``ack`` is the engine's handle on the job (unused here: ARQ settles its own jobs).
        """
        if await self.redis.exists(self.keys.cancelled(message.task_id)):
            logger.info("task %s was cancelled while it ran; its outcome is dropped", message.task_id)
            return False
        await self.save_task(message, previous)
        return True

    async def update_task_status(
        self,
        task_id: str,
        status: TaskStatus | str,
        result: Any = None,
        error: str | None = None,
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
            message = await self.get_task_status(task_id)
            if message is None:
                raise InvalidTask(f"no task with id {task_id!r}")
            if message.is_terminal:
                return message
            remaining = 5.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} still {message.status.value} after {timeout}s")
            # Rotating the list onto itself is a blocking peek: the marker stays for every other waiter.
            await _peek(self.redis, done_key, min(max(remaining, 0.01), 5.0))

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
                    raw = fields.get(b"task_id", fields.get("task_id"))
                    task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
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

    async def retry_task(self, task_id: str) -> bool:
        """Run a task again from scratch under a fresh engine job id (so ARQ never drops it as a duplicate)."""
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
        nodes = await self.get_nodes() if message.requirements else []
        self._place(message, nodes)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.done(task_id), self.keys.cancelled(task_id))
            self._dispatch_ops(pipe, message)
            await pipe.execute()
        return True

    async def requeue_zombie(self, zombie: TaskMessage, reason: str) -> str | None:
        """Re-run a zombie (attempt+1) or, out of retries, fail it; exactly once however many callers race.

        The change is a compare-and-set on the task key: it applies only if the task is still running
        on the same node under the same engine job. Returns the new status, or ``None`` if nothing changed.
        """
        key = self.keys.task(zombie.task_id)
        nodes = await self.get_nodes() if zombie.requirements else []
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            if raw is None:
                return None
            current = wire.loads(raw, TaskMessage)
            if (current.status, current.assigned_node, current.engine_job_id) != (
                TaskStatus.RUNNING, zombie.assigned_node, zombie.engine_job_id
            ):
                return None
            pipe.multi()
            self._drop_ops(pipe, current)
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
            try:
                await pipe.execute()
            except WatchError:
                return None
        if current.is_terminal:
            await self._release_dependents(current)
        return current.status.value

    async def assign_to_node(
        self, task_id: str, node_id: str, *, requirements: dict[str, Any] | None = None
    ) -> bool:
        """Move a task that has not started to ``node_id``'s own queue under a fresh engine job.

        A compare-and-set on the task: ``False`` when a spore started (or took) it meanwhile.
        """
        key = self.keys.task(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            if raw is None:
                raise InvalidTask(f"no task with id {task_id!r}")
            message = wire.loads(raw, TaskMessage)
            parked = message.status == TaskStatus.WAITING and message.queue == ""
            if message.status != TaskStatus.PENDING and not parked:
                return False
            if await self._taken(pipe, message):
                return False
            previous = message.status
            pipe.multi()
            self._drop_ops(pipe, message)
            if requirements:
                message.requirements = {**message.requirements, **requirements}
            message.engine_job_id = f"{task_id}.a{uuid.uuid4().hex[:8]}"
            message.queue = self._queue_for(message.priority, node_id)
            message.assigned_node = node_id
            message.reason = None
            message.status = TaskStatus.PENDING
            self._queue_ops(pipe, message, previous)
            pipe.zrem(self.keys.unrouted, task_id)
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def _taken(self, pipe: Any, message: TaskMessage) -> bool:
        """Whether a spore holds the task's job without having recorded the start yet (watched, for the
        compare-and-set): moving it then would let that spore run it anyway. ARQ: its in-progress key."""
        in_progress = in_progress_key_prefix + message.engine_job_id
        await pipe.watch(in_progress)
        return bool(await pipe.exists(in_progress))

    async def reroute_stranded(self, *, now: float | None = None) -> dict[str, int]:
        """Give parked tasks a node that now fits (or fail them past their timeout), and move tasks queued
        for nodes that went offline back through placement. Returns counts of what moved.
        """
        now = time.time() if now is None else now
        counts = {"placed": 0, "expired": 0, "rerouted": 0}
        nodes = await self.get_nodes()
        parked = await self.redis.zrange(self.keys.unrouted, 0, -1, withscores=True)
        for raw_id, since in parked:
            task_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            message = await self.get_task_status(task_id)
            if message is None or message.status != TaskStatus.WAITING:
                await self.redis.zrem(self.keys.unrouted, task_id)
                continue
            target = self.kernel.route(message, nodes)
            expired = now - since > message.timeout
            if target is None and not expired:
                continue
            if not await self.redis.zrem(self.keys.unrouted, task_id):
                continue  # another nexus took it
            if target is None:
                message.status = TaskStatus.FAILED
                message.completed_at = utcnow()
                message.error = f"no online node met {message.requirements} within {message.timeout:g}s"
                await self.save_task(message)
                counts["expired"] += 1
            else:
                await self.dispatch(message, node=target)
                counts["placed"] += 1
        online = {n.node_id for n in nodes}
        known = set(_text(await _awaited(self.redis.hkeys(self.keys.node_infos))))
        # A spore that stopped cleanly deregistered itself, but tasks the balancer routed to it may still sit
        # in its queue: find those queues too (from them only routed tasks, with requirements, move; a task
        # pinned to a node that is not up yet stays for it).
        queue_prefix = self.keys.node_queue("")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in queue_prefix) + "*"
        found = _text([k async for k in self.redis.scan_iter(match=pattern, count=1000)])
        queued_for = {k[len(queue_prefix) :] for k in found}
        for node_id in (known | queued_for) - online:
            queue = self.keys.node_queue(node_id)
            for job, handle in await self.queued_jobs(queue):
                # The job id is the task id, or the task id plus ".<suffix>" (task ids may contain dots).
                candidates = [m for m in await self.get_tasks([job, job.rpartition(".")[0] or job])
                              if m is not None and m.engine_job_id == job]
                message = candidates[0] if candidates else None
                if message is None or message.status not in (TaskStatus.PENDING, TaskStatus.RETRYING):
                    continue
                if node_id not in known and not message.requirements:
                    continue
                task_id = message.task_id
                if not await self._unqueue_job(queue, job, handle):
                    continue
                message.engine_job_id = f"{task_id}.n{uuid.uuid4().hex[:8]}"
                await self.dispatch(message)
                counts["rerouted"] += 1
        return counts

    async def queued_jobs(self, queue: str) -> list[tuple[str, Any]]:
        """(engine job id, handle) of every job waiting on ``queue``."""
        return [(job, job) for job in _text(await self.redis.zrange(queue, 0, -1))]

    async def _unqueue_job(self, queue: str, job: str, handle: Any) -> bool:
        """Take one job off ``queue``; ``False`` if someone else took it first."""
        if not await self.redis.zrem(queue, job):
            return False
        await self.redis.delete(job_key_prefix + job)
        return True

    async def _drop_engine_job(self, message: TaskMessage) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self._drop_ops(pipe, message)
            pipe.zrem(self.keys.unrouted, message.task_id)
            await pipe.execute()

    def _drop_ops(self, pipe: Any, message: TaskMessage) -> None:
        """Commands that take the task's current engine job off its queue (ARQ: the sorted set and job keys)."""
        job = message.engine_job_id
        for queue in {message.queue, *self.keys.queues} - {""}:
            pipe.zrem(queue, job)
        pipe.delete(job_key_prefix + job, retry_key_prefix + job, in_progress_key_prefix + job)

    # --- cluster view ----------------------------------------------------------------------------------

    def _depth_ops(self, pipe: Any) -> None:
        """Exactly two commands whose replies are the high and background queue depths."""
        pipe.zcard(self.keys.high_queue)
        pipe.zcard(self.keys.background_queue)

    async def get_queue_stats(self) -> dict[str, int]:
        """Counts for the whole cluster. Queue lengths include jobs a spore has started but not finished."""
        cutoff = time.time() - self.config.result_ttl
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in TaskStatus:
                if status.is_terminal:
                    pipe.zremrangebyscore(self.keys.status_index(status), "-inf", cutoff)
            self._depth_ops(pipe)
            for status in TaskStatus:
                pipe.zcard(self.keys.status_index(status))
            results = await pipe.execute()
        counts = results[-(len(TaskStatus) + 2) :]
        by_status = dict(zip(TaskStatus, counts[2:], strict=True))
        return {
            "high_priority_queue": counts[0],
            "background_queue": counts[1],
            "tasks_pending": by_status[TaskStatus.PENDING] + by_status[TaskStatus.RETRYING],
            "tasks_running": by_status[TaskStatus.RUNNING],
            "tasks_completed": by_status[TaskStatus.COMPLETED],
            "tasks_failed": by_status[TaskStatus.FAILED],
            "tasks_retrying": by_status[TaskStatus.RETRYING],
            "tasks_cancelled": by_status[TaskStatus.CANCELLED],
            "tasks_waiting": by_status[TaskStatus.WAITING],
        }

    async def get_cluster_nodes(self) -> tuple[list[NodeInfo], list[NodeInfo]]:
        """(online, offline) nodes: offline ones are those whose heartbeat expired without a clean stop."""
        online = await self.get_nodes()
        ids = {n.node_id for n in online}
        offline = []
        for raw in (await _awaited(self.redis.hgetall(self.keys.node_infos))).values():
            try:
                info = wire.loads(raw, NodeInfo)
            except WireError:
                continue
            if info.node_id not in ids:
                offline.append(info)
        return online, sorted(offline, key=lambda n: n.last_heartbeat, reverse=True)

    async def dead_letters(self, limit: int = 100) -> list[TaskMessage]:
        """Tasks that failed for good, newest first."""
        ids = _text(await self.redis.zrevrange(self.keys.dead_letters, 0, limit - 1))
        return [m for m in await self.get_tasks(ids) if m is not None]

    async def get_nodes(self, *, include_offline: bool = False) -> list[NodeInfo]:
        """Spores whose heartbeat has not expired, freshest first."""
        node_ids = sorted(_text(await _awaited(self.redis.smembers(self.keys.nodes))))
        if not node_ids:
            return []
        raws = await self.redis.mget([self.keys.node(n) for n in node_ids])
        nodes = []
        for raw in raws:
            if raw is None:
                continue
            try:
                nodes.append(wire.loads(raw, NodeInfo))
            except WireError as exc:
                logger.warning("ignoring a malformed node heartbeat: %s", exc)
        return sorted(nodes, key=lambda n: n.last_heartbeat, reverse=True)

    async def _remote_task_types(self) -> set[str]:
        return {t for node in await self.get_nodes() for t in node.task_types}

    async def detect_zombie_tasks(self) -> list[TaskMessage]:
        """Running tasks whose spore is gone (no heartbeat) or that ran past ``HIVE_ZOMBIE_TASK_TIMEOUT``."""
        running = [m.decode() if isinstance(m, bytes) else m for m in
                   await self.redis.zrange(self.keys.status_index(TaskStatus.RUNNING), 0, -1)]
        if not running:
            return []
        online = {n.node_id for n in await self.get_nodes()}
        now = utcnow()
        zombies = []
        for message in await self.get_tasks(running):
            if message is None or message.status != TaskStatus.RUNNING:
                continue
            too_long = (
                message.started_at is not None
                and (now - message.started_at).total_seconds() > self.config.zombie_task_timeout
            )
            orphaned = message.assigned_node is not None and message.assigned_node not in online
            if too_long or orphaned:
                zombies.append(message)
        return zombies

    # --- broadcast -------------------------------------------------------------------------------------

    async def broadcast_control(
        self, command: str, data: dict[str, Any] | None = None, target_nodes: Sequence[str] | None = None
    ) -> str:
        """Publish a control command to every spore (or only ``target_nodes``); returns the message id."""
        if not isinstance(command, str) or not command.strip():
            raise InvalidTask(f"a broadcast command must be a non-empty string, got {command!r}")
        message = BroadcastMessage(
            command=command.strip(),
            data=dict(data or {}),
            message_id=uuid.uuid4().hex,
            sender=f"pid:{os.getpid()}",
            target_nodes=list(target_nodes or []),
        )
        await self.redis.publish(self.keys.broadcast_channel, wire.dumps(message))
        return message.message_id

    async def subscribe_broadcast(self) -> PubSub:
        """A redis-py PubSub subscribed to the broadcast channel (``async for m in pubsub.listen()``)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.broadcast_channel)
        return pubsub

    async def send_reply(self, reply: BroadcastReply) -> None:
        key = self.keys.reply(reply.message_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, wire.dumps(reply))
            pipe.expire(key, REPLY_TTL_S)
            await pipe.execute()

    async def collect_replies(self, message_id: str, *, expected: int, timeout: float) -> list[BroadcastReply]:
        """Wait up to ``timeout`` for ``expected`` spores to answer a broadcast; returns what arrived."""
        deadline = time.monotonic() + timeout
        key = self.keys.reply(message_id)
        replies: list[BroadcastReply] = []
        while len(replies) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            popped = await _blpop(self.redis, key, max(remaining, 0.01))
            if popped is None:
                break
            try:
                replies.append(wire.loads(popped[1], BroadcastReply))
            except WireError as exc:
                logger.warning("ignoring a malformed broadcast reply: %s", exc)
        return replies

    # --- consuming -------------------------------------------------------------------------------------

    def create_worker(self, spore: Spore) -> Any:
        """The engine that feeds ``spore``: an ARQ worker over the node's own queue, then high, then background."""
        from ..spore import HiveWorker

        return HiveWorker(
            spore,
            queues=[self.keys.node_queue(spore.node_id), *self.keys.queues],
            redis=self.redis,
        )


@hookimpl(trylast=True)
def create_broker(kernel: Kernel) -> MessageBroker:
    return MessageBroker(kernel)
