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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from ..models import TaskMessage, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..config import HiveConfig
    from ..keys import Keys
    from .base import MessageBroker

logger = logging.getLogger(__name__)

#: A status a caller knows a task had before a save (``None``: new task), or ``"unknown"``.
Previous = TaskStatus | str | None


@attrs.frozen
class Delivery:
    """One job an engine handed to a spore: the task it carries and the engine's receipt for it."""

    task_id: str
    job_id: str
    #: Opaque to everyone but the engine (a stream entry, an ARQ job id...).
    receipt: Any = None
    #: Set once the attempt began: the (attempt, engine job id, node) the task record must still show for this
    #: attempt's outcome to be saved. An attempt whose lease lapsed and which ran again elsewhere (or was
    #: re-queued by the watchdog) finds the record moved on, and its late outcome is dropped, not saved over
    #: the newer attempt's.
    fence: tuple[int, str, str] | None = None


def fenced(message: TaskMessage) -> None:
    """Log an outcome an engine did not save because a newer attempt owns the task (see ``Delivery.fence``)."""
    logger.warning("task %s: the outcome of attempt %d is not saved: the record no longer shows this attempt "
                   "running (its lease lapsed and a newer attempt or a re-queue owns the task, or this same save "
                   "landed before its reply was lost)", message.task_id, message.attempt)


def fence_holds(raw: bytes | str | None, fence: tuple[int, str, str]) -> bool:
    """Whether the stored task record ``raw`` still shows the fenced attempt running (the Python twin of the
    check in the streams engine's ``guarded.lua``)."""
    if raw is None:
        return False
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(record, dict):
        return False
    attempt, job, node = fence
    return (record.get("status"), record.get("attempt"), record.get("engine_job_id"), record.get("assigned_node")) \
        == ("running", attempt, job, node)


@attrs.define
class Attempt:
    """A delivery a spore will run: the task (already marked running and saved) and its delivery."""

    message: TaskMessage
    delivery: Delivery
    #: Set when the outcome was not saved because the fence held (a newer attempt, a re-queue, or a failover
    #: that rolled the record back owns the task): the delivery was left as it is, not settled, since the
    #: job may still be needed; an engine that settles by itself when the job returns (ARQ) keeps the job.
    fenced: bool = False


class TaskRunner(Protocol):
    """What an engine's worker calls to run the attempts it takes (implemented by the core, not engines)."""

    node_id: str
    concurrency: int
    #: The task types this spore serves: its worker takes no job of any other type (skills are capabilities).
    task_types: Sequence[str]

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
        """How many attempts run now."""

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
    def drop_ops(self, pipe: Pipeline, message: TaskMessage) -> None:
        """Commands that take ``message``'s job off its queue, if no spore took it yet."""

    @abc.abstractmethod
    def depth_ops(self, pipe: Pipeline) -> None:
        """Exactly two commands whose replies are the high and the background queue depths (every type's)."""

    def queued_types_ops(self, pipe: Pipeline) -> None:
        """One command whose reply is every task type that ever had a job queued (for waiting reasons)."""
        pipe.smembers(self.key("types"))

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
    async def record(self, items: Sequence[tuple[TaskMessage, Previous, Delivery | None]]) -> list[list[str] | None]:
        """Save each task's progress unless it was cancelled meanwhile (the cancellation stands), settling
        its delivery in the same step (a retrying task's job is scheduled again, a pending one handed back).
        A delivery with a ``fence`` is saved only while the stored record still is that attempt, running
        (see :attr:`Delivery.fence`), checked in the same atomic step as the save.

        Per item: ``None`` where the cancellation or the fence won, else the ids of the tasks waiting on it when it is
        now final (``[]`` otherwise); the broker releases those.
        """

    @abc.abstractmethod
    async def settle(self, deliveries: Sequence[Delivery]) -> None:
        """Finish the jobs of deliveries a spore will not run (no record, already final, moved elsewhere)."""

    @abc.abstractmethod
    def create_worker(self, runner: TaskRunner) -> Worker:
        """The worker that feeds one spore (``runner.node_id``) with up to ``runner.concurrency`` attempts."""
