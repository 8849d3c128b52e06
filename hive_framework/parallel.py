"""The seed's ``ParallelSkill``: map-reduce as string-in, JSON-out calls, for planners and agents."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import HiveError, InvalidTask
from .jobs import ItemOutcome, MapJob
from .wire import to_plain

if TYPE_CHECKING:
    from .broker import MessageBroker


class ParallelSkill:
    """The seed's ``ParallelSkill(message_broker)``: every method returns a JSON string, errors included.

    ``json.loads`` never fails on what it returns; something wrong is reported as ``{"error": ...}``.
    """

    def __init__(self, message_broker: MessageBroker | None = None) -> None:
        self._broker = message_broker

    async def _connected(self) -> MessageBroker:
        if self._broker is None:
            from .broker import MessageBroker

            self._broker = MessageBroker()
        if not self._broker.is_connected:
            await self._broker.connect()
        return self._broker

    async def map_reduce(
        self,
        task_description: str,
        items: str | Sequence[Any],
        priority: int | str = "high_priority",
        wait_timeout: float = 300,
        task_type: str | None = None,
        reducer: str | None = None,
        *,
        chunk_size: int = 1,
        cancel_on_timeout: bool = False,
        forget: bool = False,
    ) -> str:
        """MAP items to tasks, DISTRIBUTE them, WAIT up to ``wait_timeout`` s, REDUCE: a JSON report.

        ``items`` is a JSON array (string) or a list. Results come back in input order; on timeout the
        unfinished items are reported as pending (and cancelled when ``cancel_on_timeout``). ``forget=True``
        deletes the completed items' task records once the report holds their results.
        """
        return await self._run(task_description, items, "items", priority, wait_timeout, task_type, reducer,
                               chunk_size, cancel_on_timeout, forget)

    async def parallel_execute(
        self,
        task_description: str,
        subtasks: str | Sequence[Any],
        priority: int | str = "high_priority",
        wait_timeout: float = 600,
        task_type: str | None = None,
        reducer: str | None = None,
        *,
        cancel_on_timeout: bool = False,
    ) -> str:
        """Run independent subtasks in parallel: the same JSON report as :meth:`map_reduce`, in subtask order."""
        return await self._run(task_description, subtasks, "subtasks", priority, wait_timeout, task_type, reducer,
                               1, cancel_on_timeout, False)

    async def get_task_status(self, task_id: str) -> str:
        """One task as JSON (``{"error": ...}`` when unknown)."""
        try:
            broker = await self._connected()
            message = await broker.get_task_status(task_id)
        except Exception as exc:
            return _error(exc)
        if message is None:
            return json.dumps({"error": f"no task with id {task_id!r}", "task_id": task_id})
        return json.dumps(to_plain(message), default=str)

    async def _run(
        self,
        description: str,
        raw_items: str | Sequence[Any],
        label: str,
        priority: int | str,
        wait_timeout: float,
        task_type: str | None,
        reducer: str | None,
        chunk_size: int,
        cancel_on_timeout: bool,
        forget: bool,
    ) -> str:
        try:
            items = parse_items(raw_items, label)
            broker = await self._connected()
            kernel = broker.kernel
            chosen = task_type or kernel.claim(description, items)
            job = MapJob(broker, chosen, items, description=description, chunk_size=chunk_size, priority=priority)
            await job.submit()
            async for _ in job.stream(wait_timeout):
                pass
            if cancel_on_timeout:
                await job.cancel_unfinished()
            outcomes = job.ordered()
            name = reducer or getattr(kernel.task_types.get(chosen), "reducer", None) or "collect"
            reduce_error: dict[str, Any] = {}
            try:
                reduced = kernel.reduce(name, [o.result for o in outcomes if o.ok])
            except Exception as exc:  # the items ran: report them along with why they could not be reduced
                reduced, reduce_error = None, json.loads(_error(exc))
            if forget:
                await broker.forget_tasks(job.task_ids)
            return json.dumps(
                {
                    "summary": summarize(outcomes, time.monotonic() - job.started),
                    "task_type": chosen,
                    "job_id": job.job_id,
                    "results": [to_plain(o) for o in outcomes],
                    "reducer": name,
                    "reduced": reduced,
                    **reduce_error,
                },
                default=str,
            )
        except Exception as exc:
            return _error(exc)


def parse_items(raw: str | Sequence[Any], label: str = "items") -> list[Any]:
    """A JSON array string or a list; anything else (or an empty list) is :class:`InvalidTask`."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidTask(f"{label} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) or not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise InvalidTask(f"{label} must be a JSON array, got {type(raw).__name__}")
    if not raw:
        raise InvalidTask(f"{label} is empty: nothing to do")
    return list(raw)


def summarize(outcomes: list[ItemOutcome], duration_s: float) -> dict[str, Any]:
    """The seed's summary block: counts by outcome, success rate and duration."""
    total = len(outcomes)
    completed = sum(o.ok for o in outcomes)
    pending = sum(o.status in ("pending", "waiting", "scheduled", "running", "retrying") for o in outcomes)
    cancelled = sum(o.status == "cancelled" for o in outcomes)
    return {
        "total_tasks": total,
        "completed": completed,
        "failed": total - completed - pending - cancelled,
        "pending": pending,
        "cancelled": cancelled,
        "success_rate": round(completed / total, 4) if total else 0.0,
        "duration_s": round(duration_s, 3),
    }


def _error(exc: BaseException) -> str:
    if isinstance(exc, HiveError):
        return json.dumps({"error": str(exc), "error_type": type(exc).__name__})
    return json.dumps({"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__})
