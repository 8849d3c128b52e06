"""One trivial implementation of every life-cycle hook, for bench/hooks_cost.py (``--app bench.hooks_trivial``)."""

from __future__ import annotations

from typing import Any

from hive_framework import TaskMessage, hookimpl

SEEN = [0]


@hookimpl
def before_enqueue(task: TaskMessage) -> None:
    SEEN[0] += 1


@hookimpl
def before_task(task: TaskMessage) -> None:
    SEEN[0] += 1


@hookimpl
def after_task(task: TaskMessage, result: Any) -> None:
    SEEN[0] += 1


@hookimpl
def on_retry(task: TaskMessage) -> None:
    SEEN[0] += 1


@hookimpl
def on_task_failure(task: TaskMessage) -> None:
    SEEN[0] += 1
