"""Default ``execute``: runs task types from the kernel's registry (``@task`` and ``register_task_types``)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable
from typing import Any

from ..hookspecs import hookimpl
from ..isolation import ProcessPool
from ..models import TaskMessage
from ..tasks import TaskContext, TaskType


@hookimpl(trylast=True)
def execute(task: TaskMessage, context: TaskContext) -> Awaitable[Any] | None:
    task_type = context.kernel.task_types.get(task.task_type)
    if task_type is None:
        return None
    return run_handler(task_type, task.payload, context)


async def run_handler(task_type: TaskType, payload: dict[str, Any], context: TaskContext) -> Any:
    """Call a handler: async ones directly, sync ones in a worker thread so the spore stays responsive.

    A sync handler runs in a copy of the attempt's ``contextvars`` (as ``asyncio.to_thread`` does), so what
    ``before_task`` hooks made current (a trace span, a request id) is current in the handler as well.
    """
    kwargs = {"context": context} if task_type.wants_context else {}
    if task_type.is_async:
        return await task_type.handler(payload, **kwargs)
    if task_type.isolation == "process":
        return await handler_processes(context).call(task_type.handler, payload)
    executor = getattr(context.spore, "executor", None)
    call = functools.partial(contextvars.copy_context().run, task_type.handler, payload, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


_processes: ProcessPool | None = None


def handler_processes(context: TaskContext) -> ProcessPool:
    """The spore's pool of handler processes; outside a spore (a direct call in a script), one per process."""
    global _processes
    pool = getattr(context.spore, "processes", None)
    if pool is not None:
        return pool  # type: ignore[no-any-return]
    if _processes is None:
        _processes = ProcessPool(4)
    return _processes
