"""The spans of one task: ``hive enqueue``, ``hive queue wait`` and one ``hive run`` per attempt.

A run span is opened by ``before_task`` and closed by whichever closing hook follows, so it is kept here
between the two, keyed by ``(task_id, attempt)``. An attempt that gets no closing hook (a stopping spore
hands it back, another spore's newer attempt fenced it off) is closed when its asyncio task ends, and the
table is capped besides, so nothing grows without bound.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from hive_framework import TaskMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .propagation import extract_context, inject_context

logger = logging.getLogger(__name__)

#: The instrumentation scope of every span this plugin makes.
SCOPE = "hive_plugin_otel"
#: ``messaging.system`` of hive's spans.
SYSTEM = "hive"
#: Most attempts kept open at once in one process; past it the oldest is closed as ``abandoned``.
MAX_OPEN_ATTEMPTS = 10_000
#: Where a spore records a task's queue wait: ``span`` (its own span, the default) or ``attribute``
#: (``hive.queue_wait_s`` on the first run span: one span fewer per task, about a quarter of tracing's cost).
QUEUE_WAIT_ENV = "OTEL_PYTHON_HIVE_QUEUE_WAIT"
QUEUE_WAIT_MODES = ("span", "attribute")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def tracer() -> trace.Tracer:
    """This plugin's tracer from the global provider (a proxy that follows the provider the application sets)."""
    from . import __version__

    return trace.get_tracer(SCOPE, __version__)


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def queue_wait_mode(environ: Mapping[str, str] = os.environ) -> str:
    """The queue-wait mode :data:`QUEUE_WAIT_ENV` asks for; ``span`` (with a warning naming the value) when it
    names no mode."""
    value = environ.get(QUEUE_WAIT_ENV, "").strip().lower() or "span"
    if value not in QUEUE_WAIT_MODES:
        logger.warning("%s=%r is not one of %s; recording queue waits as spans", QUEUE_WAIT_ENV,
                       environ[QUEUE_WAIT_ENV], ", ".join(QUEUE_WAIT_MODES))
        return "span"
    return value


def task_attributes(task: TaskMessage) -> dict[str, AttributeValue]:
    """Attributes every span of ``task`` carries (messaging conventions plus ``hive.*``)."""
    attributes: dict[str, AttributeValue] = {
        "messaging.system": SYSTEM,
        "messaging.message.id": task.task_id,
        "hive.task_id": task.task_id,
        "hive.task_type": task.task_type,
        "hive.priority": task.priority,
    }
    if task.queue:
        attributes["messaging.destination.name"] = task.queue
        attributes["hive.queue"] = task.queue
    return attributes


# --------------------------------------------------------------------------------------------------
# Enqueue
# --------------------------------------------------------------------------------------------------


def trace_enqueue(task: TaskMessage) -> Span:
    """Record ``hive enqueue <type>`` (PRODUCER) under the caller's context, and put its context in the headers.

    With no current span, a trace context the caller already put in ``task.headers`` is continued.
    """
    parent = otel_context.get_current()
    if not trace.get_current_span(parent).get_span_context().is_valid:
        parent = extract_context(task.headers, base=parent)
    attributes = task_attributes(task) | {"messaging.operation.type": "send"}
    if task.eta is not None:
        attributes["hive.eta"] = task.eta.isoformat()
    span = tracer().start_span(f"hive enqueue {task.task_type}", context=parent, kind=SpanKind.PRODUCER,
                               attributes=attributes)
    try:
        inject_context(task.headers, trace.set_span_in_context(span, parent))
    finally:
        span.end()
    return span


# --------------------------------------------------------------------------------------------------
# Attempts
# --------------------------------------------------------------------------------------------------


@attrs.define
class OpenAttempt:
    """A run span between ``before_task`` and its closing hook, with what attaching its context returned."""

    span: Span
    token: contextvars.Token[Context] | None
    owner: asyncio.Task[Any] | None


class Attempts:
    """The run spans open in this process, by ``(task_id, attempt)``; at most ``limit`` of them."""

    def __init__(self, limit: int = MAX_OPEN_ATTEMPTS, queue_wait: str | None = None) -> None:
        self.limit = limit
        #: ``span`` or ``attribute``: see :data:`QUEUE_WAIT_ENV` (read from it when not given).
        self.queue_wait = queue_wait_mode() if queue_wait is None else queue_wait
        self._open: OrderedDict[tuple[str, int], OpenAttempt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def begin(self, task: TaskMessage, node_id: str) -> Span:
        """Open the run span of this attempt (and, on the first, record the queue wait); run the rest in its context.

        The context is attached in the caller's asyncio task, the one that then runs the handler, so spans the
        handler starts are children of the run span.
        """
        key = (task.task_id, task.attempt)
        parent = extract_context(task.headers)
        common = task_attributes(task)
        attributes = common | {
            "messaging.operation.type": "process",
            "hive.attempt": task.attempt,
            "hive.max_retries": task.max_retries,
            "hive.node_id": node_id,
        }
        if task.attempt <= 1:
            if self.queue_wait == "span":
                trace_queue_wait(task, parent, common)
            else:
                wait = queue_wait(task)
                if wait is not None:
                    start, end, skew = wait
                    attributes["hive.queue_wait_s"] = (end - start) / 1e9
                    if skew:
                        attributes["hive.clock_skew_s"] = skew
        span = tracer().start_span(f"hive run {task.task_type}", context=parent, kind=SpanKind.CONSUMER,
                                   attributes=attributes)
        owner = _current_task()
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        stale = self._open.pop(key, None)
        if stale is not None:
            _close(stale.span, "abandoned", None)
        self._open[key] = OpenAttempt(span, token, owner)
        while len(self._open) > self.limit:
            _, oldest = self._open.popitem(last=False)
            _close(oldest.span, "abandoned", None)
        if owner is not None:
            owner.add_done_callback(lambda _: self._ended(key, span))
        return span

    def end(self, task: TaskMessage, outcome: str, error: tuple[str, BaseException | None] | None,
            **attributes: AttributeValue) -> Span | None:
        """Close this attempt's run span with ``outcome`` (``error``: the recorded text and the exception).

        Returns the span, or ``None`` when this process opened none for the attempt.
        """
        opened = self._open.pop((task.task_id, task.attempt), None)
        if opened is None:
            return None
        if attributes:
            opened.span.set_attributes(attributes)
        _close(opened.span, outcome, error)
        if opened.token is not None and opened.owner is not None and opened.owner is _current_task():
            # Same asyncio task as before_task, so the same contextvars Context: the token resets cleanly.
            otel_context.detach(opened.token)
        return opened.span

    def _ended(self, key: tuple[str, int], span: Span) -> None:
        """The attempt's asyncio task finished: a run span still open got no closing hook (handed back)."""
        opened = self._open.get(key)
        if opened is not None and opened.span is span:
            del self._open[key]
            _close(span, "handed_back", None)


def trace_queue_wait(task: TaskMessage, parent: Context, common: dict[str, AttributeValue] | None = None) -> None:
    """Record ``hive queue wait <type>`` from enqueue (or the eta of a delayed task) to the first start.

    ``common``: the task's :func:`task_attributes` when the caller has them already."""
    wait = queue_wait(task)
    if wait is None:
        return
    start, end, skew = wait
    attributes = dict(common) if common is not None else task_attributes(task)
    if skew:
        attributes["hive.clock_skew_s"] = skew
    span = tracer().start_span(f"hive queue wait {task.task_type}", context=parent, kind=SpanKind.INTERNAL,
                               attributes=attributes, start_time=start)
    span.end(end_time=end)


def queue_wait(task: TaskMessage) -> tuple[int, int, float] | None:
    """The first wait of ``task`` as (start, end) in epoch nanoseconds and the clock skew in seconds: from enqueue
    (or the eta of a delayed task) to the first start. A spore whose clock is behind the enqueuing host's gets an
    empty wait and the skew, never a negative wait. ``None`` before it started."""
    if task.started_at is None:
        return None
    begin = task.created_at
    if task.eta is not None and task.eta > begin:
        begin = task.eta
    start, end = to_ns(begin), to_ns(task.started_at)
    if end < start:
        return start, start, (start - end) / 1e9
    return start, end, 0.0


def trace_failure_without_run(task: TaskMessage, node_id: str, error: str) -> Span:
    """A task failed on this spore with no attempt run here (its spores kept dying): a short ERROR run span."""
    attributes = task_attributes(task) | {
        "messaging.operation.type": "process",
        "hive.attempt": task.attempt,
        "hive.node_id": node_id,
    }
    span = tracer().start_span(f"hive run {task.task_type}", context=extract_context(task.headers),
                               kind=SpanKind.CONSUMER, attributes=attributes)
    _close(span, "failed", (error, None))
    return span


def _close(span: Span, outcome: str, error: tuple[str, BaseException | None] | None) -> None:
    """Set the outcome (and ERROR with the exception for a failed attempt) and end ``span``."""
    span.set_attribute("hive.outcome", outcome)
    if error is not None:
        text, exception = error
        if exception is not None:
            span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, text))
    span.end()


def _current_task() -> asyncio.Task[Any] | None:
    """The running asyncio task, or ``None`` outside one."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
