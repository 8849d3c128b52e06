"""Skills as capabilities: which task types the online spores serve, what they advertise for each, and the
waiting of a task whose type no online spore serves.

Every spore advertises the task types it serves, with their declared options (priority, timeout, retries,
requirements, wait timeout), in its heartbeat (``NodeInfo.task_options``) and in the registry
``{prefix}:task_types`` (type -> JSON options; kept, so a type once served stays known while no spore of it
runs). A client may then enqueue a type it has not imported, by name, with those options; a type never
advertised needs ``allow_unknown``, so a typo is caught at enqueue.

A task whose type no online spore serves is queued on its type's queue like any other (status ``pending``; a
spore serving it takes it as soon as it joins, with no nexus needed), with the reason it waits,
``no online spore serves `T```, shown by ``hive task``, ``hive status`` and the Monitor, and noted in
``{prefix}:unserved`` (task id scored by the time it started waiting); the nexus fails it only when its own
wait timeout (``wait_timeout`` of the task, else of its type; none: it waits for good) passes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidTask
from ..models import NodeInfo, TaskMessage, TaskStatus
from ..policies import parse_priority
from ..redisutil import read_or_empty, text
from .poison import quarantine

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..keys import Keys
    from ..tasks import TaskType

#: The start of the reason of a task waiting for a spore that serves its type.
UNSERVED = "no online spore serves"
#: How long a client trusts its view of the online spores' task types before reading it again (seconds).
VIEW_TTL_S = 1.0
#: The options a spore advertises per task type (what a client without the type's code needs to enqueue it).
OPTION_NAMES = ("priority", "timeout", "max_retries", "requirements", "wait_timeout")


def unserved_reason(task_type: str) -> str:
    return f"{UNSERVED} `{task_type}`"


def is_unserved(message: TaskMessage) -> bool:
    """True for a queued task that waits because no online spore served its type when it was queued (a scheduled
    task once it is due)."""
    return (
        (message.status == TaskStatus.PENDING or (message.status == TaskStatus.SCHEDULED and not message.not_due()))
        and bool(message.queue)
        and (message.reason or "").startswith(UNSERVED)
    )


def registry_key(keys: Keys) -> str:
    """Hash task type -> JSON of the options its spores advertised (never expires)."""
    return f"{keys.prefix}:task_types"


def unserved_key(keys: Keys) -> str:
    """Sorted set of task ids waiting for a spore of their type, scored by when they started waiting."""
    return f"{keys.prefix}:unserved"


def _priority(value: Any) -> bool:
    try:
        parse_priority(value)
    except InvalidTask:
        return False
    return True


def sane_options(value: Any) -> bool:
    """Whether ``value`` has the shape of :func:`advertised_options` (each option missing, null or of its type)."""
    if not isinstance(value, dict):
        return False
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    checks: dict[str, Callable[[Any], bool]] = {
        "priority": _priority,
        "timeout": number,
        "max_retries": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "requirements": lambda v: isinstance(v, dict),
        "wait_timeout": number,
    }
    return all(value.get(name) is None or check(value[name]) for name, check in checks.items())


def advertised_options(task_type: TaskType) -> dict[str, Any]:
    """What a spore advertises for one of its task types."""
    return {name: getattr(task_type, name, None) for name in OPTION_NAMES}


class TypeView:
    """A client's cached view of the online spores' task types and the advertised options of every type."""

    def __init__(self, served: set[str], advertised: dict[str, dict[str, Any]], nodes: list[NodeInfo]) -> None:
        self.served = served
        self.advertised = advertised
        self.nodes = nodes
        self.taken_at = time.monotonic()

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self.taken_at < VIEW_TTL_S

    @classmethod
    async def read(cls, redis: Redis, keys: Keys, nodes: list[NodeInfo]) -> TypeView:
        """Read the registry and merge in the online spores' advertisements; a registry entry that is not
        options a spore could have written is quarantined (poison) instead of failing every enqueue."""
        raw: Mapping[Any, Any] = await read_or_empty(redis.hgetall(registry_key(keys)), {}, registry_key(keys))
        advertised: dict[str, dict[str, Any]] = {}
        for name, options in raw.items():
            try:
                value = json.loads(options)
            except (ValueError, RecursionError) as exc:
                value, reason = None, f"not JSON: {exc}"
            else:
                reason = "" if sane_options(value) else "not a mapping of task type options"
            if reason:
                field = f"{registry_key(keys)} {text(name)}"
                await quarantine(redis, keys, field, options, reason, [("HDEL", registry_key(keys), name)])
                continue
            advertised[text(name)] = value
        for node in nodes:
            for name, options in node.task_options.items():
                if sane_options(options):
                    advertised.setdefault(name, dict(options))
            for name in node.task_types:
                advertised.setdefault(name, {})
        served = {t for node in nodes for t in node.task_types}
        return cls(served, advertised, nodes)


async def advertise(redis: Redis, keys: Keys, task_types: Mapping[str, TaskType]) -> None:
    """Record the options of every type a spore serves in the registry (a spore does it when it starts)."""
    if task_types:
        mapping = {name: json.dumps(advertised_options(t), default=str) for name, t in task_types.items()}
        await redis.hset(registry_key(keys), mapping=mapping)  # type: ignore[misc]


async def waiting_for_spores(redis: Redis, keys: Keys, nodes: list[NodeInfo]) -> dict[str, int]:
    """Per task type, how many queued tasks wait because no online spore serves that type now."""
    served = {t for node in nodes for t in node.task_types}
    # Scored by when each started waiting: a scheduled task's score is its due time, so one not due is left out.
    key = unserved_key(keys)
    ids = [text(raw) for raw in await read_or_empty(redis.zrangebyscore(key, "-inf", time.time()), [], key)]
    counts: dict[str, int] = {}
    raws = await redis.mget([keys.task(t) for t in ids]) if ids else []
    for raw in raws:
        if raw is None:
            continue
        try:
            task = json.loads(raw)
            task_type, status, reason = task["task_type"], task.get("status"), task.get("reason") or ""
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # not a task record the hive wrote: the task readers quarantine it
        if not (isinstance(task_type, str) and isinstance(reason, str)):
            continue
        waiting = status in (TaskStatus.PENDING.value, TaskStatus.SCHEDULED.value)
        if waiting and reason.startswith(UNSERVED) and task_type not in served:
            counts[task_type] = counts.get(task_type, 0) + 1
    return dict(sorted(counts.items()))
