"""Task types: the ``@task`` decorator, :class:`TaskType` and what a running task sees (:class:`TaskContext`)."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import attrs

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .config import HiveConfig
    from .kernel import Kernel
    from .models import TaskMessage

TASK_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


@attrs.frozen(kw_only=True)
class TaskType:
    """A named kind of work: its handler and the defaults every task of this type starts with.

    ``None`` defaults fall back to the hive's config (``HIVE_TASK_TIMEOUT``, ``HIVE_MAX_RETRIES``).
    ``requirements`` are node requirements such as ``{"gpu": True}`` or ``{"tags": ["ml"]}``.
    """

    name: str = attrs.field()
    handler: Callable[..., Any]
    priority: int | str = "background"
    timeout: float | None = None
    max_retries: int | None = None
    requirements: dict[str, Any] = attrs.field(factory=dict)
    reducer: str | None = None
    description: str = ""

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not TASK_NAME_RE.fullmatch(value):  # match() would let a trailing newline through ('$')
            raise ValueError(f"bad task type name {value!r}: use letters, digits, '_', '.', ':' or '-'")

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
) -> TaskType | Callable[[Callable[..., Any]], TaskType]:
    """Declare a task type, as Celery's ``@app.task`` or Dramatiq's ``@actor`` do.

    The handler takes the payload dict (and, if it names one, a ``context`` parameter) and returns
    JSON data; it may be sync (run in a thread) or async. Define it at module level in a module passed
    to ``hive spore --app MODULE`` or in a plugin, and every kernel loading that module knows it::

        @task("resize", priority="high_priority", timeout=30, max_retries=2)
        async def resize(payload): ...
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
            description=(inspect.getdoc(func) or "").split("\n")[0],
        )

    if callable(name):
        return wrap(name)
    return wrap


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

    @property
    def config(self) -> HiveConfig:
        return self.kernel.config

    async def dependency_results(self) -> dict[str, Any]:
        """Results of the tasks this one depends on (``depends_on``), by task id."""
        from . import wire
        from .models import TaskMessage

        ids = list(self.task.depends_on)
        if not ids:
            return {}
        raws = await self.redis.mget([self.kernel.keys.task(t) for t in ids])
        return {
            t: (wire.loads(r, TaskMessage).result if r is not None else None)
            for t, r in zip(ids, raws, strict=True)
        }
