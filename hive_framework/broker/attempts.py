"""One attempt of a task on a spore, engine-neutral: begin it, run it under its timeout, record the outcome.

Engines' workers call this through the :class:`~hive_framework.broker.engine.TaskRunner` interface; the
spore only supplies how a task is executed (its handler, its thread pool, its context).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .. import wire
from ..errors import UnknownTaskType, WireError
from ..keys import read_task
from ..limits import TypeLimits
from ..models import TaskMessage, TaskStatus, utcnow
from ..outage import RedisLink, is_outage
from ..policies import retry_delay
from ..redisutil import raise_if_cancelling
from .engine import Attempt, Delivery, Fence, Guard, Previous

if TYPE_CHECKING:
    from .base import MessageBroker

logger = logging.getLogger(__name__)


class Start(enum.Enum):
    """What to do with a task a spore just took."""

    #: Nothing to run: no record, already final, waiting, or moved to another engine job.
    SKIP = "skip"
    #: Out of attempts (the spores running it kept dying): it is failed now.
    EXHAUSTED = "exhausted"
    #: Marked running here with its attempt counted: save it, then run it.
    RUN = "run"
    #: A scheduled task delivered before its ``eta`` (clocks apart): its job goes back until it is due.
    EARLY = "early"


def begin_attempt(message: TaskMessage | None, job_id: str, node_id: str) -> Start:
    """Decide what to do with a delivered task, and mark the attempt on ``message`` accordingly."""
    if message is None:
        return Start.SKIP
    if message.is_terminal or job_id != message.engine_job_id or message.status == TaskStatus.WAITING:
        return Start.SKIP
    if message.status == TaskStatus.SCHEDULED and message.not_due():
        return Start.EARLY
    message.attempt += 1
    if message.attempt > message.max_retries + 1:
        message.status = TaskStatus.FAILED
        message.completed_at = utcnow()
        lost = message.error or "the spore running it was lost"
        message.error = f"{lost} (gave up after {message.attempt - 1} attempts)"
        return Start.EXHAUSTED
    message.status = TaskStatus.RUNNING
    message.started_at = utcnow()
    message.completed_at = None
    message.assigned_node = node_id
    message.reason = None
    return Start.RUN


def _from_copy(raw: bytes | str | None, task_id: str) -> TaskMessage | None:
    """The task a job's copy of its record shows; ``None`` when there is none or it does not decode (the record
    itself is read then, and judged on its own: a copy is never quarantined)."""
    if raw is None:
        return None
    try:
        return read_task(task_id, raw)
    except WireError:
        return None


class AttemptRunner:
    """The :class:`~hive_framework.broker.engine.TaskRunner` of one spore."""

    def __init__(
        self,
        broker: MessageBroker,
        *,
        node_id: str,
        node_name: str,
        concurrency: int,
        task_types: Sequence[str] = (),
        execute: Callable[[TaskMessage], Awaitable[Any]],
        log: logging.Logger | None = None,
        link: RedisLink | None = None,
        limits: TypeLimits | None = None,
    ) -> None:
        self.broker = broker
        self.node_id = node_id
        self.node_name = node_name
        self.concurrency = concurrency
        self.task_types: Sequence[str] = sorted(task_types)
        self._execute = execute
        self.log = log or logger
        #: Where outages are reported; an outcome that cannot be saved because Redis is away is saved again
        #: (with back-off) until it can be, or until the fence says a newer attempt owns the task.
        self.link = link or RedisLink(self.log)
        #: Per-type rates and caps: workers consult them before they claim; :meth:`run` enforces the caps.
        self.limits = limits or TypeLimits({})
        #: With ``HIVE_PREFETCH``, a worker begins more attempts than there are slots: at most ``concurrency`` of
        #: them get past this gate (into their hooks and handler) at once; the others wait here, begun.
        self.gate = asyncio.Semaphore(concurrency) if broker.config.prefetch else None

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Attempt]:
        """Mark every delivered task running in one round trip (plus one to read the records, unless the engine
        brought them with the jobs); settle the ones with nothing to run.

        A job that carries a copy of its record (a stream entry queued while its stream was short) begins from the
        copy, on condition that the record is still exactly that: the usual case saves the round trip that reads
        it. Otherwise (the record moved on, or the copy would not run as it is) the record is read as usual."""
        copied: list[tuple[TaskMessage, Delivery, Previous, Fence]] = []
        others: list[Delivery] = []
        for delivery in deliveries:
            copy = delivery.record
            if copy is None or not copy.copy:
                others.append(delivery)
                continue
            message = _from_copy(copy.raw, delivery.task_id)
            if message is None or copy.raw is None:
                others.append(attrs.evolve(delivery, record=None))
                continue
            before, fence = message.status, Fence.copy_of(message, copy.raw)
            if begin_attempt(message, delivery.job_id, self.node_id) is Start.RUN:
                copied.append((message, delivery, before, fence))
            else:
                others.append(attrs.evolve(delivery, record=None))
        saved = await self.broker.record_attempts([(m, p, f) for m, _, p, f in copied])
        began = [
            Attempt(m, attrs.evolve(d, fence=Fence.running(m.attempt, m.engine_job_id, self.node_id)))
            for (m, d, _, _), ok in zip(copied, saved, strict=True) if ok
        ]
        others += [attrs.evolve(d, record=None) for (_, d, _, _), ok in zip(copied, saved, strict=True) if not ok]
        return began + (await self._begin(others) if others else [])

    async def _begin(self, deliveries: Sequence[Delivery]) -> list[Attempt]:
        """:meth:`begin` from records read now or read with the jobs."""
        engine = self.broker.engine
        ids = [d.task_id for d in deliveries]
        prefetched = [d.record for d in deliveries]
        if all(p is not None for p in prefetched):
            messages = await self.broker.get_tasks(ids, [p.raw for p in prefetched if p is not None])
        else:
            messages = await self.broker.get_tasks(ids)
        skips: list[Delivery] = []
        exhausted: list[tuple[TaskMessage, Previous, Guard]] = []
        runs: list[tuple[TaskMessage, Delivery]] = []
        early: list[Attempt] = []
        previous: list[Previous] = []
        as_read: list[Fence | None] = []
        for delivery, message in zip(deliveries, messages, strict=True):
            before = message.status if message is not None else None
            # The record must be unchanged when the attempt's write lands: another spore may have finished or
            # begun the task since it was read (a lapsed lease, a reply lost in a partition).
            read = Fence.of(message) if message is not None else None
            start = begin_attempt(message, delivery.job_id, self.node_id)
            if message is None:
                self.log.warning("task %s has no record (expired or deleted); dropping its job", delivery.task_id)
                skips.append(delivery)
            elif start is Start.SKIP:
                skips.append(delivery)
            elif start is Start.EXHAUSTED:
                exhausted.append((message, before, attrs.evolve(delivery, fence=read)))
            elif start is Start.EARLY:
                early.append(Attempt(message, attrs.evolve(delivery, fence=read), early=True))
            else:
                runs.append((message, delivery))
                previous.append(before)
                as_read.append(read)
        await engine.settle(skips)
        given_up = await self.broker.record_attempts(exhausted)
        kernel = self.broker.kernel
        if kernel.lifecycle["on_task_failure"]:
            for (message, _, _), ok in zip(exhausted, given_up, strict=True):
                if ok:
                    await kernel.run_lifecycle("on_task_failure", task=message, error=message.error or "",
                                               exception=None, node_id=self.node_id)
        # The attempt is saved before it runs: a spore killed by its task the moment it starts (a segfault, the
        # OOM killer) has still counted the attempt, so a task that keeps killing spores is given up on.
        saved = await self.broker.record_attempts(
            [(m, p, f) for (m, _), p, f in zip(runs, previous, as_read, strict=True)]
        )
        refused = [d for (_, d), ok in zip(runs, saved, strict=True) if not ok]
        await engine.settle(refused)
        return early + [
            Attempt(m, attrs.evolve(d, fence=Fence.running(m.attempt, m.engine_job_id, self.node_id)))
            for (m, d), ok in zip(runs, saved, strict=True) if ok
        ]

    async def run(self, attempt: Attempt) -> float | None:
        """Run one attempt and record its outcome; the retry delay when it failed and may retry, else ``None``.

        On cancellation (a stopping spore) the task is handed back untouched and ``CancelledError`` propagates.
        """
        message, delivery = attempt.message, attempt.delivery
        if attempt.early:
            return await self._put_back(attempt)
        kernel = self.broker.kernel
        hooks = kernel.lifecycle
        retriable = True
        failure: BaseException | None = None
        try:
            async with self.gate or contextlib.nullcontext():
                if hooks["before_task"]:  # outside the timeout: hooks do not eat into the task's time
                    await kernel.run_lifecycle("before_task", task=message, node_id=self.node_id)
                slot = self.limits.slot(message.task_type)
                if slot is not None and slot.locked():
                    # Taken past the cap (pinned to this spore, taken over from a lost one): wait for a turn first.
                    self.log.info("task %s waits for one of the %s running here to finish", message.task_id,
                                  message.task_type)
                async with slot or contextlib.nullcontext(), asyncio.timeout(message.timeout) as deadline:
                    result = await self._execute(message)
            wire.json_size(result)
        except asyncio.CancelledError:
            message.status = TaskStatus.PENDING
            message.attempt -= 1
            message.started_at = None
            message.assigned_node = None
            await asyncio.shield(self._record(message, delivery, attempt))
            raise
        except TimeoutError as exc:
            failure = exc
            if not deadline.expired():
                error = "TimeoutError raised by the task"
            else:
                error = f"TaskTimeout: task ran past its timeout of {message.timeout:g}s"
        except UnknownTaskType as exc:
            failure = exc
            retriable = False
            error = f"UnknownTaskType: spore {self.node_name} cannot run it: {exc}"
        except WireError as exc:
            failure = exc
            retriable = False
            error = f"BadResult: the task's result is not JSON data ({exc})"
        except Exception as exc:
            failure = exc
            error = f"{type(exc).__name__}: {exc}"
        else:
            attempt.ran()
            message.status = TaskStatus.COMPLETED
            message.result = result
            message.error = None
            message.completed_at = utcnow()
            if not await self._record(message, delivery, attempt):
                if attempt.fenced:
                    return None
                message.status = TaskStatus.CANCELLED  # the hooks see the task as it is recorded
            if hooks["after_task"]:
                await kernel.run_lifecycle("after_task", task=message, result=result, node_id=self.node_id)
            return None
        attempt.ran()
        message.error = error
        if retriable and message.attempt <= message.max_retries:
            delay = retry_delay(self.broker.config, message.attempt)
            message.status = TaskStatus.RETRYING
            if await self._record(message, delivery, attempt):
                self.log.info("task %s attempt %d failed (%s); retrying in %.2fs",
                              message.task_id, message.attempt, error, delay)
                if hooks["on_retry"]:
                    await kernel.run_lifecycle("on_retry", task=message, error=error, exception=failure, delay=delay,
                                               node_id=self.node_id)
                return delay
            if attempt.fenced:
                return None  # a newer attempt owns the task: its outcome, not this one, is the task's
            message.status = TaskStatus.CANCELLED  # a cancellation won over the retry
        else:
            message.status = TaskStatus.FAILED
            message.completed_at = utcnow()
            saved = await self._record(message, delivery, attempt)
            if attempt.fenced:
                return None
            self.log.warning("task %s failed after %d attempt(s): %s", message.task_id, message.attempt, error)
            if not saved:
                message.status = TaskStatus.CANCELLED  # a cancellation won over the failure
        if hooks["on_task_failure"]:
            await kernel.run_lifecycle("on_task_failure", task=message, error=error, exception=failure,
                                       node_id=self.node_id)
        return None

    async def _put_back(self, attempt: Attempt) -> float | None:
        """Hand back the job of a scheduled task delivered before it is due, unchanged (nothing ran); the seconds
        until it is due, when its engine is to bring it back then (``None``: cancelled or moved on meanwhile)."""
        message = attempt.message
        assert message.eta is not None
        self.log.info("task %s was delivered %.3fs before it is due; its job waits until then",
                      message.task_id, (message.eta - utcnow()).total_seconds())
        if not await self._record(message, attempt.delivery, attempt) or attempt.fenced:
            return None
        return max((message.eta - utcnow()).total_seconds(), 0.001)

    async def _record(self, message: TaskMessage, delivery: Delivery, attempt: Attempt) -> bool:
        """Save the outcome and settle the delivery together; if a cancellation won, settle it alone; if the
        fence did, leave the delivery as it is (``attempt.fenced``). While Redis is away the save is tried
        again with back-off: the fence makes a late save safe."""
        backoff = self.link.backoff()
        while True:
            raise_if_cancelling()
            try:
                saved = await self.broker.save_unless_cancelled(
                    message, previous=TaskStatus.RUNNING, delivery=delivery
                )
                if not saved and delivery.fence is not None and not await self.broker.redis.exists(
                    self.broker.keys.cancelled(message.task_id)
                ):
                    # Not a cancellation: the record moved on. Its job may be the one that must run the task
                    # (a failover brought back an older record with the same entry), so it is not settled.
                    attempt.fenced = True
                elif not saved:
                    await self.broker.engine.settle([delivery])
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.link.lost(exc, f"saving task {message.task_id}")
                await asyncio.sleep(backoff.next_delay())
                continue
            self.link.back()
            return saved
