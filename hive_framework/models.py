"""Everything that crosses the wire, as attrs classes. :mod:`hive_framework.wire` turns them into JSON."""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime
from typing import Any

import attrs

#: Named priorities of the seed, and where they sit on the 0-10 scale.
PRIORITY_NAMES: dict[str, int] = {
    "background": 0,
    "low": 2,
    "normal": 5,
    "high": 10,
    "high_priority": 10,
}
#: Levels at or above this go to the high-priority queue.
HIGH_PRIORITY_LEVEL = 5


def utcnow() -> datetime:
    """Timezone-aware now, the only clock models use."""
    return datetime.now(UTC)


class TaskStatus(enum.StrEnum):
    """Life cycle of a task: [waiting ->] [scheduled ->] pending -> running -> completed | failed, with retrying
    and cancelled.

    ``waiting`` means the task has dependencies (``depends_on``) that have not all completed yet; ``scheduled``
    that it was submitted with a ``delay`` or ``eta`` (:attr:`TaskMessage.eta`) and is not due yet.
    """

    WAITING = "waiting"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


#: Longest progress note kept; a longer one is cut (progress is written often and must stay small).
PROGRESS_NOTE_MAX = 500


class InvalidProgress(ValueError):
    """A handler reported progress that means nothing (NaN, negative, done past total, a non-text note)."""


@attrs.define(kw_only=True)
class TaskProgress:
    """How far a running task says it is: ``done`` of ``total`` units, with an optional note."""

    done: float
    total: float
    note: str | None = None
    #: The attempt that reported it (a retried task starts over).
    attempt: int = 0
    updated_at: datetime = attrs.field(factory=utcnow)

    @classmethod
    def checked(cls, done: object, total: object, note: object = None, *, attempt: int = 0) -> TaskProgress:
        """Validate what a handler passed; :class:`InvalidProgress` says what is wrong."""
        for name, value in (("done", done), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidProgress(f"progress {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidProgress(f"progress {name} must be finite, got {value!r}")
            if value < 0:
                raise InvalidProgress(f"progress {name} must be >= 0, got {value!r}")
        assert isinstance(done, int | float) and isinstance(total, int | float)
        if done > total:
            raise InvalidProgress(f"progress done ({done!r}) is more than total ({total!r})")
        if note is not None and not isinstance(note, str):
            raise InvalidProgress(f"progress note must be text or None, got {type(note).__name__}")
        return cls(done=float(done), total=float(total), note=None if note is None else note[:PROGRESS_NOTE_MAX],
                   attempt=attempt)


@attrs.define(kw_only=True)
class TaskMessage:
    """One task and its whole state. Lives as JSON at ``{prefix}:task:{task_id}``.

    ``attempt`` counts started runs (1 on the first); a task may run ``max_retries + 1`` times.
    """

    task_id: str
    task_type: str
    payload: dict[str, Any] = attrs.field(factory=dict)
    priority: int = 0
    queue: str = ""
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    max_retries: int = 3
    timeout: float = 300.0
    requirements: dict[str, Any] = attrs.field(factory=dict)
    assigned_node: str | None = None
    created_at: datetime = attrs.field(factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    error: str | None = None
    job_id: str | None = None
    #: Tasks that must complete before this one starts; their results are readable from the context.
    depends_on: list[str] = attrs.field(factory=list)
    #: When set, the task runs its type once per payload here (map-reduce ``chunk_size``); result is a list.
    chunk: list[dict[str, Any]] | None = None
    #: Why the task is in its status, when that needs saying (e.g. waiting for a node with a GPU).
    reason: str | None = None
    #: How long the task may wait for an online spore that serves its type before it fails (None: no limit).
    wait_timeout: float | None = None
    #: The engine job that carries this task now; a retry, move or zombie re-run gets a fresh one, so a spore
    #: holding the old job skips it (and ARQ never drops the new one as a duplicate).
    engine_job_id: str = ""
    #: Text metadata carried with the task (a trace context, a tenant...): set by the caller or ``before_enqueue``.
    headers: dict[str, str] = attrs.field(factory=dict)
    #: The last progress the handler reported (``TaskContext.progress``); the live value is read with
    #: :meth:`MessageBroker.get_task_with_progress`.
    progress: TaskProgress | None = None
    #: When a delayed task (``delay``/``eta`` at submit) is due: it waits as ``scheduled`` until then.
    eta: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def not_due(self, now: datetime | None = None) -> bool:
        """Whether the task has an ``eta`` still ahead of ``now`` (default: this clock's now)."""
        return self.eta is not None and self.eta > (now or utcnow())


@attrs.define(kw_only=True)
class NodeInfo:
    """A spore's heartbeat. Lives at ``{prefix}:node:{node_id}`` and expires when the spore stops beating."""

    node_id: str
    node_name: str
    host: str
    pid: int
    started_at: datetime = attrs.field(factory=utcnow)
    last_heartbeat: datetime = attrs.field(factory=utcnow)
    cpu_usage: float = 0.0
    memory_usage: float = 0.0
    active_tasks: int = 0
    concurrency: int = 0
    paused: bool = False
    capabilities: dict[str, Any] = attrs.field(factory=dict)
    task_types: list[str] = attrs.field(factory=list)
    #: The declared options of each served task type (priority, timeout, max_retries, requirements,
    #: wait_timeout), so a client without the type's code can enqueue it by name.
    task_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    plugins: list[str] = attrs.field(factory=list)
    hive_version: str = ""
    code_version: str = ""


@attrs.define(kw_only=True)
class BroadcastMessage:
    """A control command published on the broadcast channel (``venom:broadcast``).

    ``target_nodes`` limits it to those node ids or names; empty means every spore.
    """

    command: str
    data: dict[str, Any] = attrs.field(factory=dict)
    message_id: str = ""
    sender: str = ""
    sent_at: datetime = attrs.field(factory=utcnow)
    target_nodes: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class BroadcastReply:
    """A spore's answer to a broadcast, pushed to ``{prefix}:reply:{message_id}``."""

    message_id: str
    node_id: str
    node_name: str
    command: str
    ok: bool = True
    detail: str = ""
    at: datetime = attrs.field(factory=utcnow)
