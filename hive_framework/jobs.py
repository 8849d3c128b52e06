"""Map jobs: many items fanned out as tasks of one job, followed through the job's completion stream.

Shared by :meth:`Hive.map` / :meth:`Hive.map_stream` and the seed's :class:`ParallelSkill`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import wire
from .errors import WireError
from .models import TaskMessage, TaskProgress, TaskStatus

if TYPE_CHECKING:
    from .broker import MessageBroker


@attrs.define(kw_only=True)
class ItemOutcome:
    """What became of one item of a map job."""

    item_index: int
    item: Any
    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    node: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == TaskStatus.COMPLETED.value


@attrs.define(kw_only=True)
class ItemProgress:
    """The latest progress the handler of an unfinished item reported (``TaskContext.progress``)."""

    task_id: str
    #: The items the task runs (one, unless the job was chunked).
    item_indexes: list[int]
    progress: TaskProgress


def item_payload(item: Any, description: str = "") -> dict[str, Any]:
    """The payload a task gets for one item: a dict item as it is, anything else as ``{"item": ...}``."""
    if isinstance(item, dict):
        return item
    payload: dict[str, Any] = {"item": item}
    if description:
        payload["description"] = description
    return payload


class MapJob:
    """One fan-out: submit once, then stream outcomes as they finish (each item exactly once)."""

    def __init__(
        self,
        broker: MessageBroker,
        task_type: str,
        items: Sequence[Any],
        *,
        description: str = "",
        chunk_size: int = 1,
        priority: int | str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        requirements: dict[str, Any] | None = None,
        wait_timeout: float | None = None,
        allow_unknown: bool = False,
        delay: float | str | None = None,
        eta: datetime | str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.broker = broker
        self.task_type = task_type
        self.items = list(items)
        self.description = description
        self.chunk_size = chunk_size
        self.priority = priority
        self.timeout = timeout
        self.max_retries = max_retries
        self.requirements = requirements
        self.wait_timeout = wait_timeout
        self.allow_unknown = allow_unknown
        #: When the items may start, as :meth:`MessageBroker.enqueue_task` takes them (``None``: at once).
        self.delay = delay
        self.eta = eta
        self.job_id = uuid.uuid4().hex
        self.task_ids: list[str] = []
        self._indexes: dict[str, list[int]] = {}
        self.outcomes: dict[int, ItemOutcome] = {}
        self.started = 0.0

    async def submit(self) -> list[str]:
        """Enqueue the items' tasks in one batch (all or none) and record the job; the task ids, in order."""
        from .broker import TaskSpec
        from .broker.specs import due_time

        # One due time for every item, checked before anything is stored: a delay counts from now, not from
        # when each item's spec happens to be built.
        eta = due_time(self.delay, self.eta)
        payloads = [item_payload(item, self.description) for item in self.items]
        specs = []
        size = self.chunk_size
        groups = [list(range(i, min(i + size, len(payloads)))) for i in range(0, len(payloads), size)]
        for group in groups:
            if self.chunk_size == 1:
                payload, chunk = payloads[group[0]], None
            else:
                payload, chunk = {"chunk_of": len(group)}, [payloads[i] for i in group]
            specs.append(
                TaskSpec(
                    task_type=self.task_type,
                    payload=payload,
                    priority=self.priority,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    requirements=self.requirements,
                    wait_timeout=self.wait_timeout,
                    allow_unknown=self.allow_unknown,
                    job_id=self.job_id,
                    chunk=chunk,
                    eta=eta,
                )
            )
        self.started = time.monotonic()
        self.task_ids = await self.broker.enqueue_many(specs)
        self._indexes = dict(zip(self.task_ids, groups, strict=True))
        record = getattr(self.broker, "record_job", None)
        if record is not None:  # so the Hive Monitor can show the job and its progress
            await record(self.job_id, task_type=self.task_type, tasks=len(self.task_ids), items=len(self.items),
                         description=self.description)
        return self.task_ids

    async def stream(self, timeout: float | None = None) -> AsyncIterator[ItemOutcome]:
        """Yield each item's outcome once, as its task finishes; stop at ``timeout`` seconds."""
        async for message in self.broker.iter_job(self.job_id, self.task_ids, timeout):
            for outcome in self._outcomes_of(message):
                if outcome.item_index not in self.outcomes:
                    self.outcomes[outcome.item_index] = outcome
                    yield outcome

    async def stream_with_progress(
        self, every: float, timeout: float | None = None
    ) -> AsyncIterator[ItemOutcome | ItemProgress]:
        """:meth:`stream`, and between outcomes an :class:`ItemProgress` for each unfinished task whose
        reported progress changed, looked up every ``every`` seconds (one MGET for all of them)."""
        if not every > 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {every!r}")
        found: asyncio.Queue[ItemOutcome | None] = asyncio.Queue()

        async def outcomes() -> None:
            try:
                async for outcome in self.stream(timeout):
                    found.put_nowait(outcome)
            finally:
                found.put_nowait(None)

        producer = asyncio.create_task(outcomes())
        seen: dict[str, tuple[float, float, str | None, int]] = {}
        next_look = time.monotonic() + every
        try:
            while True:
                try:
                    async with asyncio.timeout(max(next_look - time.monotonic(), 0)):
                        outcome = await found.get()
                except TimeoutError:
                    next_look = time.monotonic() + every
                    for progress in await self._progress_changes(seen):
                        yield progress
                    continue
                if outcome is None:
                    break
                yield outcome
            await producer  # its error, if it failed, is the caller's
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _progress_changes(self, seen: dict[str, tuple[float, float, str | None, int]]) -> list[ItemProgress]:
        done = {i for i in self.outcomes}
        running = [t for t, group in self._indexes.items() if not all(i in done for i in group)]
        if not running:
            return []
        keys = self.broker.keys
        raws = await self.broker.redis.mget([keys.progress(t) for t in running])
        changes = []
        for task_id, raw in zip(running, raws, strict=True):
            if raw is None:
                continue
            try:
                progress = wire.loads(raw, TaskProgress)
            except WireError:
                continue  # advisory: a value that does not decode is skipped, as Hive.progress does
            state = (progress.done, progress.total, progress.note, progress.attempt)
            if seen.get(task_id) != state:
                seen[task_id] = state
                changes.append(ItemProgress(task_id=task_id, item_indexes=list(self._indexes[task_id]),
                                            progress=progress))
        return changes

    def _outcomes_of(self, message: TaskMessage) -> list[ItemOutcome]:
        indexes = self._indexes[message.task_id]
        if message.chunk is None:
            return [self._outcome(indexes[0], message, message.status.value, message.result, message.error)]
        parts = message.result if message.status == TaskStatus.COMPLETED and isinstance(message.result, list) else None
        outcomes = []
        for position, index in enumerate(indexes):
            if parts is not None and position < len(parts) and isinstance(parts[position], dict):
                part = parts[position]
                status = TaskStatus.COMPLETED.value if part.get("ok") else TaskStatus.FAILED.value
                outcomes.append(self._outcome(index, message, status, part.get("result"), part.get("error")))
            else:
                outcomes.append(self._outcome(index, message, message.status.value, None, message.error))
        return outcomes

    def _outcome(self, index: int, message: TaskMessage, status: str, result: Any, error: str | None) -> ItemOutcome:
        return ItemOutcome(
            item_index=index,
            item=self.items[index],
            task_id=message.task_id,
            status=status,
            result=result,
            error=error,
            node=message.assigned_node,
        )

    def unfinished(self) -> list[ItemOutcome]:
        """Items without an outcome yet, reported as pending."""
        by_index = {i: t for t, group in self._indexes.items() for i in group}
        return [
            ItemOutcome(item_index=i, item=self.items[i], task_id=by_index[i], status=TaskStatus.PENDING.value)
            for i in range(len(self.items))
            if i not in self.outcomes
        ]

    async def cancel_unfinished(self) -> int:
        """Cancel the tasks of every item still unfinished; returns how many tasks were cancelled."""
        cancelled = 0
        for outcome in self.unfinished():
            if await self.broker.cancel_task(outcome.task_id):
                cancelled += 1
            else:
                message = await self.broker.get_task_status(outcome.task_id)
                if message is not None and message.is_terminal and message.status != TaskStatus.CANCELLED:
                    # It finished just as the wait timed out: report what it did, not a cancellation.
                    for real in self._outcomes_of(message):
                        self.outcomes.setdefault(real.item_index, real)
                    continue
            outcome.status = TaskStatus.CANCELLED.value
            outcome.error = "cancelled: unfinished when the wait timed out"
            self.outcomes[outcome.item_index] = outcome
        return cancelled

    def ordered(self) -> list[ItemOutcome]:
        """Every item's outcome (finished or pending) in input order."""
        return sorted([*self.outcomes.values(), *self.unfinished()], key=lambda o: o.item_index)
