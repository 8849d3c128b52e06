"""``Hive``: the one facade for embedding — submit tasks, wait for results, look at the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from types import ModuleType
from typing import Any, overload

from .broker import MessageBroker, TaskSpec
from .broker.base import FORGET_CHUNK
from .config import HiveConfig
from .errors import InvalidTask, TaskFailed, WaitTimeout, no_such_task
from .jobs import ItemOutcome, ItemProgress, MapJob
from .kernel import Kernel
from .models import NodeInfo, TaskMessage, TaskProgress, TaskStatus


class Hive:
    """A client of one hive::

        async with Hive.connect("redis://localhost:6379/0", apps=["myapp.tasks"]) as hive:
            task_id = await hive.submit("resize", {"path": "a.png"})
            print(await hive.result(task_id, timeout=30))
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.broker: MessageBroker = MessageBroker(kernel)

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        apps: Iterable[str | ModuleType] = (),
        plugins: Iterable[Any] = (),
        config: HiveConfig | None = None,
        **settings: Any,
    ) -> Hive:
        """Build a client; use it as ``async with`` (or call :meth:`open`). ``settings`` override config keys."""
        base = config if config is not None else HiveConfig.load()
        if url is not None:
            settings["redis_url"] = url
        if settings:
            base = base.evolve(**settings)
        return cls(Kernel(base, apps=apps, plugins=plugins))

    async def open(self) -> Hive:
        await self.broker.connect()
        return self

    async def close(self) -> None:
        await self.broker.disconnect()

    async def __aenter__(self) -> Hive:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def config(self) -> HiveConfig:
        return self.kernel.config

    # --- tasks -------------------------------------------------------------------------------------

    async def submit(self, task_type: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        """Enqueue one task; ``options`` are those of :meth:`MessageBroker.enqueue_task` (``delay="5m"`` or
        ``eta=datetime`` stores it as ``scheduled`` and runs it when due)."""
        return await self.broker.enqueue_task(task_type, payload, **options)

    async def submit_many(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Enqueue a batch in one transaction (each :class:`TaskSpec` may carry ``delay`` or ``eta``)."""
        return await self.broker.enqueue_many(specs)

    async def status(self, task_id: str) -> TaskMessage | None:
        return await self.broker.get_task_status(task_id)

    async def progress(self, task_id: str) -> TaskProgress | None:
        """The latest progress the task's handler reported (``context.progress``); ``None`` if none yet.

        Raises :class:`InvalidTask` for an unknown (or expired) task id.
        """
        message = await self.broker.get_task_with_progress(task_id)
        if message is None:
            raise InvalidTask(no_such_task(task_id))
        return message.progress

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskMessage:
        """The task once it is final (completed, failed or cancelled)."""
        return await self.broker.wait_for_task(task_id, timeout)

    async def result(self, task_id: str, timeout: float | None = None, *, forget: bool = False) -> Any:
        """The task's result; raises :class:`TaskFailed` if it failed or was cancelled.

        ``forget=True`` deletes the completed task's record once its result is read (:meth:`forget`).
        """
        message = await self.wait(task_id, timeout)
        if message.status != TaskStatus.COMPLETED:
            raise TaskFailed(task_id, message.status.value, message.error)
        if forget:
            await self.broker.forget_tasks([task_id])
        return message.result

    async def forget(self, *task_ids: str) -> int:
        """Delete completed tasks' records now rather than after ``HIVE_RESULT_TTL``; how many went.

        For results already collected: what a finished task keeps in Redis goes at once. Failed and
        cancelled tasks (the dead letters), unfinished ones and ones other tasks depend on are kept.
        """
        return await self.broker.forget_tasks(task_ids)

    async def run(
        self, task_type: str, payload: dict[str, Any] | None = None, *, timeout: float | None = None,
        forget: bool = False, **options: Any,
    ) -> Any:
        """Submit and wait for the result in one call (``forget=True``: as :meth:`result`)."""
        return await self.result(await self.submit(task_type, payload, **options), timeout, forget=forget)

    async def map(
        self,
        task_type: str,
        items: Iterable[Any],
        *,
        timeout: float | None = None,
        chunk_size: int = 1,
        return_exceptions: bool = False,
        forget: bool = False,
        **options: Any,
    ) -> list[Any]:
        """Run ``task_type`` once per item and return the results in input order.

        Like ``asyncio.gather``: the first failed item raises :class:`TaskFailed`, unless
        ``return_exceptions`` puts a :class:`TaskFailed` in its place. Dict items are payloads as they are;
        other items arrive as ``{"item": item}``. ``chunk_size`` batches small items into fewer tasks.
        Items unfinished after ``timeout`` seconds raise :class:`WaitTimeout` (their tasks go on). ``options``
        apply to every item's task: ``priority``, ``requirements``... and ``delay=`` / ``eta=`` as for
        :meth:`submit` (every item scheduled for the same moment; ``timeout`` counts the wait too).
        ``forget=True`` deletes the completed items' task records once their results are collected.
        """
        job = MapJob(self.broker, task_type, list(items), chunk_size=chunk_size, **options)
        await job.submit()
        async for _ in job.stream(timeout):
            pass
        missing = job.unfinished()
        if missing:
            raise WaitTimeout(
                f"{len(missing)} of {len(job.items)} items unfinished after {timeout}s (job {job.job_id})"
            )
        if forget:
            await self.broker.forget_tasks(job.task_ids)
        results: list[Any] = []
        for outcome in job.ordered():
            if outcome.ok:
                results.append(outcome.result)
                continue
            failure = TaskFailed(outcome.task_id, outcome.status, outcome.error)
            if not return_exceptions:
                raise failure
            results.append(failure)
        return results

    @overload
    def map_stream(
        self, task_type: str, items: Iterable[Any], *, timeout: float | None = None, chunk_size: int = 1,
        progress: None = None, forget: bool = False, **options: Any,
    ) -> AsyncIterator[ItemOutcome]: ...

    @overload
    def map_stream(
        self, task_type: str, items: Iterable[Any], *, timeout: float | None = None, chunk_size: int = 1,
        progress: float, forget: bool = False, **options: Any,
    ) -> AsyncIterator[ItemOutcome | ItemProgress]: ...

    async def map_stream(
        self, task_type: str, items: Iterable[Any], *, timeout: float | None = None, chunk_size: int = 1,
        progress: float | None = None, forget: bool = False, **options: Any,
    ) -> AsyncIterator[ItemOutcome | ItemProgress]:
        """Yield each item's :class:`ItemOutcome` (index, result or error) once, as soon as it finishes.

        With ``progress=SECONDS`` it also yields an :class:`ItemProgress` whenever an unfinished task's
        reported progress (``context.progress``) changed, looked up that often. ``forget=True`` deletes the
        completed items' task records once yielded (in chunks, and the rest when the stream ends).
        """
        job = MapJob(self.broker, task_type, list(items), chunk_size=chunk_size, **options)
        await job.submit()
        stream = job.stream(timeout) if progress is None else job.stream_with_progress(progress, timeout)
        collected: dict[str, None] = {}
        async for event in stream:
            yield event
            if forget and isinstance(event, ItemOutcome) and event.ok:
                collected[event.task_id] = None
                if len(collected) >= FORGET_CHUNK:
                    await self.broker.forget_tasks(list(collected))
                    collected.clear()
        if collected:
            await self.broker.forget_tasks(list(collected))

    async def cancel(self, task_id: str) -> bool:
        return await self.broker.cancel_task(task_id)

    async def retry(self, task_id: str) -> bool:
        return await self.broker.retry_task(task_id)

    # --- cluster -----------------------------------------------------------------------------------

    async def queue_stats(self) -> dict[str, int]:
        return await self.broker.get_queue_stats()

    async def nodes(self) -> list[NodeInfo]:
        return await self.broker.get_nodes()

    async def broadcast(
        self, command: str, data: dict[str, Any] | None = None, *, target_nodes: Sequence[str] | None = None
    ) -> str:
        return await self.broker.broadcast_control(command, data, target_nodes)
