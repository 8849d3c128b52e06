"""The engine interface: what a queueing engine does for the engine-neutral :class:`MessageBroker`.

The broker owns task records, status indexes, priorities, dependencies, placement, broadcast and nodes.
An engine owns only how a placed task's *job* travels: how it is queued (``enqueue_ops``), taken by a
spore (its :class:`Worker`), settled when the attempt is recorded (``record``), handed back, recovered
after a spore dies, and dropped on cancel (``drop_ops``). Every key an engine writes lies under the
hive's prefix (``keys.engine(name)``), so deleting a hive's namespace deletes all of it.

Engines never import the spore: a worker drives attempts through the :class:`TaskRunner` it is given.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from ..models import TaskMessage, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..config import HiveConfig
    from ..keys import Keys
    from ..limits import TypeLimits
    from .base import MessageBroker

logger = logging.getLogger(__name__)

#: A status a caller knows a task had before a save (``None``: new task), or ``"unknown"``.
Previous = TaskStatus | str | None


@attrs.frozen
class Fence:
    """What the stored task record must still show for a save to apply, checked in the same atomic step.

    A spore's saves are read-modify-writes of the record: beginning an attempt reads the record and writes it
    back running; finishing writes the outcome of the attempt it began. Without the check a late write
    (a lapsed lease, a reply lost in a partition) lands over a newer one: a second attempt begun over a
    finished task runs it again and records a second outcome.
    """

    status: str
    attempt: int
    job: str
    #: ``""`` for a record with no node.
    node: str
    #: When set, the record must be exactly these bytes instead (an attempt begun from a copy of the record
    #: that travelled with its job, which may be stale: any change since the copy refuses the write).
    exact: bytes | None = attrs.field(default=None, repr=False)

    @classmethod
    def running(cls, attempt: int, job: str, node: str) -> Fence:
        """The fence of an attempt that began: that attempt, running on ``node`` under ``job``."""
        return cls(TaskStatus.RUNNING.value, attempt, job, node)

    @classmethod
    def of(cls, message: TaskMessage) -> Fence:
        """The fence of a record as read: it must be unchanged when the write lands."""
        return cls(message.status.value, message.attempt, message.engine_job_id or "", message.assigned_node or "")

    @classmethod
    def copy_of(cls, message: TaskMessage, raw: bytes | str) -> Fence:
        """The fence of a record known only from a copy ``raw``: the record must still be exactly that."""
        return cls(message.status.value, message.attempt, message.engine_job_id or "", message.assigned_node or "",
                   raw.encode() if isinstance(raw, str) else raw)

    @classmethod
    def stored(cls, message: TaskMessage) -> Fence:
        """What the record shows once ``message`` is written: a final record keeps no engine job
        (:data:`~hive_framework.broker.records.LIVE_ONLY_FIELDS`)."""
        job = "" if message.is_terminal else message.engine_job_id or ""
        return cls(message.status.value, message.attempt, job, message.assigned_node or "")

    def argv(self) -> list[str | bytes]:
        """The fence as arguments of the streams engine's ``guarded.lua``."""
        if self.exact is not None:
            return ["=", self.exact, "", ""]
        return [self.status, str(self.attempt), self.job, self.node]

    def holds(self, raw: bytes | str | None) -> bool:
        """Whether the stored record ``raw`` still shows what the fence expects (the Python twin of the check
        in the streams engine's ``guarded.lua``); a missing or undecodable record does not."""
        if raw is None:
            return False
        if self.exact is not None:
            return (raw.encode() if isinstance(raw, str) else raw) == self.exact
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return False
        if not isinstance(record, dict):
            return False
        return (record.get("status"), record.get("attempt"), record.get("engine_job_id") or "",
                record.get("assigned_node") or "") == (self.status, self.attempt, self.job, self.node)


@attrs.frozen
class Prefetched:
    """A task record an engine read along with the job (``raw`` ``None``: the task has no record)."""

    raw: bytes | str | None = attrs.field(repr=False)
    #: The record was copied into the job when it was queued, not read with it: it may have moved on since.
    copy: bool = False


@attrs.frozen
class Delivery:
    """One job an engine handed to a spore: the task it carries and the engine's receipt for it."""

    task_id: str
    job_id: str
    #: Opaque to everyone but the engine (a stream entry, an ARQ job id...).
    receipt: Any = None
    #: Set once the attempt began: the record must still show this attempt running for its outcome to be
    #: saved. An attempt whose lease lapsed and which ran again elsewhere (or was re-queued by the watchdog)
    #: finds the record moved on, and its late outcome is dropped, not saved over the newer attempt's.
    fence: Fence | None = None
    #: The task record, when the engine read it in the same call that took the job (saves a round trip).
    record: Prefetched | None = attrs.field(default=None, repr=False, eq=False)


#: What a save checks and settles besides the record: a delivery (settled with the save, under its fence),
#: a bare fence (a save that settles nothing, such as beginning an attempt), or nothing.
Guard = Delivery | Fence | None


def guard_parts(guard: Guard) -> tuple[Delivery | None, Fence | None]:
    """The delivery to settle and the fence to check of a save's ``guard``."""
    if isinstance(guard, Fence):
        return None, guard
    return guard, (guard.fence if guard is not None else None)


def fenced(message: TaskMessage) -> None:
    """Log a save an engine did not apply because the record moved on (see :class:`Fence`)."""
    logger.warning("task %s: attempt %d's %s save is not applied: the record moved on (its lease lapsed and a "
                   "newer attempt, a re-queue or another spore owns the task, or this same save landed before "
                   "its reply was lost)", message.task_id, message.attempt, message.status.value)


@attrs.define
class Attempt:
    """A delivery a spore will run: the task (already marked running and saved) and its delivery."""

    message: TaskMessage
    delivery: Delivery
    #: Set when the outcome was not saved because the fence held (a newer attempt, a re-queue, or a failover
    #: that rolled the record back owns the task): the delivery was left as it is, not settled, since the
    #: job may still be needed; an engine that settles by itself when the job returns (ARQ) keeps the job.
    fenced: bool = False
    #: A scheduled task delivered before its ``eta`` (clocks apart): not begun, nothing runs; :meth:`TaskRunner.run`
    #: hands its job back until it is due (the delivery's fence is the record as read).
    early: bool = False
    #: Called when the handler is done and only the outcome's save is left (a worker may give the slot to the
    #: next task meanwhile).
    on_ran: Callable[[], None] | None = attrs.field(default=None, repr=False, eq=False)

    def ran(self) -> None:
        if self.on_ran is not None:
            self.on_ran()


class TaskRunner(Protocol):
    """What an engine's worker calls to run the attempts it takes (implemented by the core, not engines)."""

    node_id: str
    concurrency: int
    #: The task types this spore serves: its worker takes no job of any other type (skills are capabilities).
    task_types: Sequence[str]
    #: Per-type rates and caps; the worker takes no job of a type ``limits.blocked`` names.
    limits: TypeLimits

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Attempt]:
        """Mark the tasks of ``deliveries`` running; returns those to run (the rest were settled or failed)."""
        ...

    async def run(self, attempt: Attempt) -> float | None:
        """Run one attempt and record its outcome; the retry delay when it failed and may retry, else ``None``."""
        ...


class Worker(abc.ABC):
    """Feeds one spore from an engine: takes jobs in strict priority order while slots and the spore allow."""

    #: The queues this worker reads, highest priority first (for logs and the monitor).
    queues: list[str]

    @abc.abstractmethod
    async def main(self) -> None:
        """Take and run jobs until cancelled."""

    @property
    @abc.abstractmethod
    def running(self) -> int:
        """How many attempts are in flight: running, or saving their outcome (a spore with any is not idle)."""

    @abc.abstractmethod
    def in_flight(self) -> list[asyncio.Task[Any]]:
        """The asyncio tasks of running attempts (a stopping spore waits for them, then cancels them)."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Take no new job (running ones go on); a blocking read in progress is abandoned."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Take jobs again, at once."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Look for work now (a slot freed, a broadcast arrived)."""

    @abc.abstractmethod
    async def refresh_leases(self) -> None:
        """Keep the lease on every job this worker runs, so no other spore takes it over."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release what the worker holds in Redis when the spore stops (nothing by default)."""


class Engine(abc.ABC):
    """A queueing engine under :class:`MessageBroker`. Subclasses set ``name`` and implement the methods."""

    name: ClassVar[str]

    def __init__(self, config: HiveConfig) -> None:
        self.config = config
        self._broker: MessageBroker | None = None

    def attach(self, broker: MessageBroker) -> None:
        """Bind to the broker whose Redis client and key layout the engine uses."""
        self._broker = broker

    @property
    def broker(self) -> MessageBroker:
        if self._broker is None:
            raise RuntimeError(f"engine {self.name!r} is not attached to a broker")
        return self._broker

    @property
    def redis(self) -> Redis:
        return self.broker.redis

    @property
    def keys(self) -> Keys:
        return self.broker.keys

    def key(self, *parts: str) -> str:
        """A key of this engine's own, under the hive's prefix: ``{prefix}:{engine}:{parts...}``."""
        return ":".join((self.keys.engine(self.name), *parts))

    # --- the producer side (pipelined with the broker's status writes) ----------------------------------

    @abc.abstractmethod
    def queue_for(self, level: int, node: str | None, task_type: str = "") -> str:
        """The queue a task of type ``task_type`` and priority ``level`` (or pinned to ``node``) goes to.

        Shared queues are per task type, so a spore reads only the queues of the types it serves."""

    @abc.abstractmethod
    def queues(self, task_types: Sequence[str] = ()) -> list[str]:
        """The shared queues of ``task_types``, highest priority first (all levels of each type)."""

    @abc.abstractmethod
    def enqueue_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Commands that put ``message``'s job (``engine_job_id``) on ``message.queue``."""

    @abc.abstractmethod
    def schedule_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Commands that put ``message``'s job on ``message.queue`` once ``message.eta`` has come (a delayed task),
        exactly once, however many spores watch for due jobs."""

    @abc.abstractmethod
    def drop_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Commands that take ``message``'s job off its queue (or its schedule), if no spore took it yet."""

    @abc.abstractmethod
    def depth_ops(self, pipe: Pipeline) -> None:
        """Exactly two commands whose replies are the high and the background queue depths (every type's)."""

    @abc.abstractmethod
    def queue_depth_ops(self, pipe: Pipeline, queue: str) -> None:
        """One command whose reply is the number of jobs on ``queue`` (a node's own queue, for the monitor)."""

    async def watch_taken(self, pipe: Pipeline, message: TaskMessage) -> bool:
        """Whether a spore holds the job without having recorded the start yet (watched, for a compare-and-set
        move of the task). ``False`` when the engine's spores skip a job whose id no longer matches."""
        return False

    @abc.abstractmethod
    async def queued_jobs(self, queue: str) -> list[tuple[str, Any]]:
        """(job id, handle) of every job waiting on ``queue``."""

    @abc.abstractmethod
    async def unqueue(self, queue: str, job: str, handle: Any) -> bool:
        """Take one job off ``queue``; ``False`` if someone else took it first."""

    # --- the consumer side -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def record(self, items: Sequence[tuple[TaskMessage, Previous, Guard]]) -> list[list[str] | None]:
        """Save each task's progress unless it was cancelled meanwhile (the cancellation stands), settling
        its delivery, if the guard is one, in the same step (a retrying task's job is scheduled again, a
        pending one handed back). A guard with a :class:`Fence` (a bare one, or a delivery's) saves only while
        the stored record still shows what the fence expects, checked in the same atomic step as the save.

        Per item: ``None`` where the cancellation or the fence won, else the ids of the tasks waiting on it when it is
        now final (``[]`` otherwise); the broker releases those.
        """

    @abc.abstractmethod
    async def settle(self, deliveries: Sequence[Delivery]) -> None:
        """Finish the jobs of deliveries a spore will not run (no record, already final, moved elsewhere)."""

    @abc.abstractmethod
    def create_worker(self, runner: TaskRunner) -> Worker:
        """The worker that feeds one spore (``runner.node_id``) with up to ``runner.concurrency`` attempts."""
