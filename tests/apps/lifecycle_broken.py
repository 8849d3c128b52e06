"""Life-cycle hook impls that all raise: a hook's failure must be logged and never lose or fail a task."""

from __future__ import annotations

from typing import Any

from hive_framework import TaskMessage, hookimpl


class HookBroke(RuntimeError):
    pass


@hookimpl
def before_enqueue(task: TaskMessage) -> None:
    task.headers["bad"] = 42  # type: ignore[assignment]  # invalid headers are undone
    raise HookBroke("before_enqueue")


@hookimpl
def before_task(task: TaskMessage) -> None:
    raise HookBroke("before_task")


@hookimpl
async def after_task(task: TaskMessage, result: Any) -> None:
    raise HookBroke("after_task")


@hookimpl
def on_retry(task: TaskMessage) -> None:
    raise HookBroke("on_retry")


@hookimpl
def on_task_failure(task: TaskMessage) -> None:
    raise HookBroke("on_task_failure")
