"""hive-plugin-otel: OpenTelemetry spans for every task, from the process that enqueues it to the spore that runs it.

Found through the ``otel`` entry point; it implements hive's life-cycle hooks:

* ``before_enqueue``: a ``hive enqueue <type>`` span (PRODUCER) under the caller's current span, whose W3C
  trace context (``traceparent``/``tracestate``, and ``baggage``) goes into ``task.headers``;
* ``before_task``: on the spore, ``hive queue wait <type>`` (enqueue, or the eta, to the first start) and a
  ``hive run <type>`` span (CONSUMER) per attempt, children of the enqueue span, made current for the handler;
* ``after_task`` / ``on_retry`` / ``on_task_failure``: close the run span (ERROR with the exception on failure).

Only the OpenTelemetry *API* is used: with no SDK configured every span is a no-op. Turn it off with
``HIVE_DISABLE_PLUGINS=otel``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from hive_framework import HiveConfig, TaskMessage, TaskStatus, hookimpl

from .propagation import extract_context, inject_context
from .spans import MAX_OPEN_ATTEMPTS, SCOPE, Attempts, trace_enqueue, trace_failure_without_run

try:
    __version__ = version("hive-plugin-otel")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["MAX_OPEN_ATTEMPTS", "SCOPE", "Attempts", "attempts", "extract_context", "inject_context"]

#: The run spans open in this process (one per attempt running here).
attempts = Attempts()


@hookimpl
def before_enqueue(task: TaskMessage, config: HiveConfig) -> None:
    """Trace the enqueue and carry its context in the task's headers."""
    trace_enqueue(task)


@hookimpl
def before_task(task: TaskMessage, node_id: str) -> None:
    """Open this attempt's run span (and the queue-wait span) and make it current for the handler.

    It runs in the attempt's own asyncio task, so the context it attaches is the one the handler then runs in.
    """
    attempts.begin(task, node_id)


@hookimpl
def after_task(task: TaskMessage, result: Any, node_id: str) -> None:
    """The attempt completed: end its run span (outcome ``cancelled`` when a cancellation won over the result)."""
    attempts.end(task, "cancelled" if task.status is TaskStatus.CANCELLED else "completed", None)


@hookimpl
def on_retry(task: TaskMessage, error: str, exception: BaseException | None, delay: float, node_id: str) -> None:
    """The attempt failed and will run again: end its run span as ERROR, with the exception and the delay."""
    attempts.end(task, "retrying", (error, exception), **{"hive.retry_delay_s": float(delay)})


@hookimpl
def on_task_failure(task: TaskMessage, error: str, exception: BaseException | None, node_id: str) -> None:
    """The task failed for good: end the run span as ERROR (or record one, when nothing ran here). A failed
    attempt over which a cancellation won is still ERROR, with outcome ``cancelled``."""
    outcome = "cancelled" if task.status is TaskStatus.CANCELLED else "failed"
    if attempts.end(task, outcome, (error, exception)) is None:
        trace_failure_without_run(task, node_id, error)
