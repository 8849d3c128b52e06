"""Task types: the ``@task`` decorator, :class:`TaskType` and what a running task sees (:class:`TaskContext`)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, overload

import attrs

from . import wire
from .keys import read_task
from .limits import Rate, TypeLimit, check_concurrency
from .models import TaskProgress

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .broker import MessageBroker
    from .config import HiveConfig
    from .kernel import Kernel
    from .models import TaskMessage

TASK_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")

#: Seconds between two progress writes of one task, so a handler reporting in a tight loop costs Redis little.
PROGRESS_INTERVAL = 0.2

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class TaskType:
    """A named kind of work: its handler and the defaults every task of this type starts with.

    ``None`` defaults fall back to the hive's config (``HIVE_TASK_TIMEOUT``, ``HIVE_MAX_RETRIES``).
    ``requirements`` are node requirements such as ``{"gpu": True}`` or ``{"tags": ["ml"]}``.
    ``schema`` is a JSON Schema of the payload, for callers to see (and check) what to send; hive itself
    does not enforce it (hive-plugin-mcp checks it before enqueueing).
    """

    name: str = attrs.field()
    handler: Callable[..., Any]
    priority: int | str = "background"
    timeout: float | None = None
    max_retries: int | None = None
    requirements: dict[str, Any] = attrs.field(factory=dict)
    reducer: str | None = None
    description: str = ""
    schema: dict[str, Any] | None = None
    #: How long a task of this type may wait for an online spore that serves it (None: no limit).
    wait_timeout: float | None = None
    #: When the leading nexus runs it by itself: a cron expression or ``every 30s`` (see hive_framework.schedules).
    schedule: str | None = attrs.field(default=None)
    #: Where a sync handler runs: "thread" (the default) or "process", a child process killed at the timeout.
    isolation: str = attrs.field(default="thread")
    #: Cluster-wide rate, e.g. ``"100/m"``: spores together start at most that many (``burst`` back to back).
    rate: str | None = attrs.field(default=None)
    burst: int = 1
    #: Most attempts of this type one spore runs at once (e.g. its cores, for CPU-bound work); None: its slots.
    concurrency: int | None = attrs.field(default=None)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not TASK_NAME_RE.fullmatch(value):  # match() would let a trailing newline through ('$')
            raise ValueError(f"bad task type name {value!r}: use letters, digits, '_', '.', ':' or '-'")

    @schedule.validator
    def _check_schedule(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None:
            from .schedules import schedule_for_type

            try:  # a bad expression fails where the type is declared, naming it
                schedule_for_type(self.name, value)
            except ValueError as exc:
                raise ValueError(f"task type {self.name!r}: {exc}") from None

    @isolation.validator
    def _check_isolation(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in ("thread", "process"):
            raise ValueError(f"task type {self.name!r}: isolation must be 'thread' or 'process', got {value!r}")
        if value == "process":
            from .isolation import handler_address

            if inspect.iscoroutinefunction(self.handler):
                raise ValueError(f"task type {self.name!r}: isolation='process' is for sync handlers (an async "
                                 "one is cancelled at its timeout already)")
            if _declares_context(self.handler):
                raise ValueError(f"task type {self.name!r}: a handler run in a process takes only the payload "
                                 "(its context, with a Redis client, cannot cross into the child)")
            try:
                handler_address(self.handler)
            except ValueError as exc:
                raise ValueError(f"task type {self.name!r}: {exc}") from None

    @rate.validator
    def _check_rate(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        try:
            if value is not None:
                Rate.parse(value, self.burst)
            elif self.burst != 1:
                raise ValueError(f"burst={self.burst!r} without a rate")
        except ValueError as exc:
            raise ValueError(f"task type {self.name!r}: {exc}") from None

    @concurrency.validator
    def _check_concurrency(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        check_concurrency(value, f"task type {self.name!r}")

    @property
    def limit(self) -> TypeLimit:
        """The declared rate and per-spore cap (a ``[limits.NAME]`` table in ``hive.toml`` overrides them)."""
        return TypeLimit(rate=Rate.parse(self.rate, self.burst) if self.rate else None, concurrency=self.concurrency)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def wants_context(self) -> bool:
        """True when the handler declares a ``context`` parameter."""
        return _declares_context(self.handler)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly, as a plain function (handy in tests)."""
        return self.handler(*args, **kwargs)


@functools.cache
def _declares_context(handler: Callable[..., Any]) -> bool:
    """Looked up once per handler: ``inspect.signature`` is too slow for every task run."""
    return "context" in inspect.signature(handler).parameters


@overload
def task(name: Callable[..., Any], /) -> TaskType: ...


@overload
def task(
    name: str | None = None,
    /,
    *,
    priority: int | str = "background",
    timeout: float | None = None,
    max_retries: int | None = None,
    requires: dict[str, Any] | None = None,
    reducer: str | None = None,
    schema: dict[str, Any] | None = None,
    wait_timeout: float | None = None,
    schedule: str | None = None,
    isolation: str = "thread",
    rate: str | None = None,
    burst: int = 1,
    concurrency: int | None = None,
) -> Callable[[Callable[..., Any]], TaskType]: ...


def task(
    name: str | Callable[..., Any] | None = None,
    /,
    *,
    priority: int | str = "background",
    timeout: float | None = None,
    max_retries: int | None = None,
    requires: dict[str, Any] | None = None,
    reducer: str | None = None,
    schema: dict[str, Any] | None = None,
    wait_timeout: float | None = None,
    schedule: str | None = None,
    isolation: str = "thread",
    rate: str | None = None,
    burst: int = 1,
    concurrency: int | None = None,
) -> TaskType | Callable[[Callable[..., Any]], TaskType]:
    """Declare a task type, as Celery's ``@app.task`` or Dramatiq's ``@actor`` do.

    The handler takes the payload dict (and, if it names one, a ``context`` parameter) and returns
    JSON data; it may be sync (run in a thread) or async. Define it at module level in a module passed
    to ``hive spore --app MODULE`` or in a plugin, and every kernel loading that module knows it::

        @task("resize", priority="high_priority", timeout=30, max_retries=2)
        async def resize(payload): ...

    ``schema`` (a JSON Schema of the payload) is shown to callers that list task types, such as agents.
    ``schedule`` (``"*/5 * * * *"`` or ``"every 30s"``) makes the leading nexus run it with an empty payload.
    ``isolation="process"`` runs a sync handler in a child process, killed when the task times out.
    ``rate="100/m"`` (with ``burst``) limits how often the whole hive starts tasks of the type;
    ``concurrency=2`` how many of them one spore runs at once.
    """

    def wrap(func: Callable[..., Any]) -> TaskType:
        return TaskType(
            name=name if isinstance(name, str) else func.__name__,
            handler=func,
            priority=priority,
            timeout=timeout,
            max_retries=max_retries,
            requirements=dict(requires or {}),
            reducer=reducer,
            wait_timeout=wait_timeout,
            schedule=schedule,
            isolation=isolation,
            rate=rate,
            burst=burst,
            concurrency=concurrency,
            description=(inspect.getdoc(func) or "").split("\n")[0],
            schema=schema,
        )

    if callable(name):
        return wrap(name)
    return wrap


class BroadcastContext(Protocol):
    """What ``on_broadcast`` and ``apply_update`` impls get: the receiving spore, seen through this face."""

    node_id: str
    node_name: str
    kernel: Kernel
    config: HiveConfig
    log: logging.Logger

    @property
    def broker(self) -> MessageBroker: ...

    def pause(self) -> None:
        """Stop taking new tasks; running ones go on."""

    def resume(self) -> None:
        """Take tasks again."""

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""


class ProgressWriter:
    """Writes one task's progress to Redis at most once per ``interval`` and always ends with the last value.

    ``report`` may be called from any thread (sync handlers run in the spore's threads); writes happen on
    ``loop``, one at a time and in order.
    """

    def __init__(self, redis: Redis | None, key: str, ttl_ms: int, loop: asyncio.AbstractEventLoop | None,
                 interval: float = PROGRESS_INTERVAL) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.loop = loop
        self.interval = interval
        self.writes = 0
        self._latest: TaskProgress | None = None
        self._pending = False
        self._last_write = -math.inf
        self._lock = threading.Lock()
        self._io: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, value: TaskProgress) -> None:
        """Keep ``value`` as the latest and make sure a write of it is scheduled."""
        with self._lock:
            self._latest = value
            if self._pending or self.redis is None or self.loop is None or self.loop.is_closed():
                return
            self._pending = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._schedule()
        else:
            self.loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        delay = max(0.0, self._last_write + self.interval - time.monotonic())
        task = asyncio.get_running_loop().create_task(self._write(delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._io is None:
            self._io = asyncio.Lock()
        async with self._io:  # FIFO: a later write never lands before an earlier one
            with self._lock:
                value, self._pending = self._latest, False
            self._last_write = time.monotonic()
            if value is None or self.redis is None:
                return
            try:
                await self.redis.set(self.key, wire.dumps(value), px=self.ttl_ms)
                self.writes += 1
            except Exception as exc:  # progress is advisory: never fail the task over it
                logger.warning("could not write progress to %s: %s", self.key, exc)

    async def flush(self) -> None:
        """Wait until the latest value is written (tests, and a handler that wants it seen now)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _progress_writer(context: TaskContext) -> ProgressWriter:
    """A writer for the context's task, bound to the running loop when there is one (the spore's)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    config = context.kernel.config
    ttl_ms = int((config.result_ttl + context.task.timeout) * 1000)
    return ProgressWriter(context.redis, context.kernel.keys.progress(context.task.task_id), ttl_ms, loop)


@attrs.define(kw_only=True)
class TaskContext:
    """What a running task can reach: its own message, the node, the kernel and a Redis client."""

    task: TaskMessage
    node_id: str
    node_name: str
    kernel: Kernel
    redis: Redis
    logger: logging.Logger
    spore: Any = None
    #: Shared by the contexts of one task's chunk parts (``attrs.evolve`` carries it), so their writes stay ordered.
    progress_writer: ProgressWriter = attrs.field(
        default=attrs.Factory(_progress_writer, takes_self=True), repr=False, eq=False
    )

    @property
    def config(self) -> HiveConfig:
        return self.kernel.config

    def progress(self, done: float, total: float, note: str | None = None) -> None:
        """Report that ``done`` of ``total`` units are done; returns at once, from async or sync handlers alike.

        Readable with ``hive task ID``, ``Hive.progress(ID)`` and the Monitor. Written to Redis at most every
        0.2 s (the latest value always lands); bad values raise :class:`~hive_framework.models.InvalidProgress`.
        """
        value = TaskProgress.checked(done, total, note, attempt=self.task.attempt)
        self.task.progress = value
        self.progress_writer.report(value)

    async def dependency_results(self) -> dict[str, Any]:
        """Results of the tasks this one depends on (``depends_on``), by task id."""
        ids = list(self.task.depends_on)
        if not ids:
            return {}
        raws = await self.redis.mget([self.kernel.keys.task(t) for t in ids])
        return {
            t: (read_task(t, r).result if r is not None else None)
            for t, r in zip(ids, raws, strict=True)
        }
