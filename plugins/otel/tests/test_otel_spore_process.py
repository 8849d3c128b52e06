"""Across a real spore process: the test enqueues (in-memory exporter), a spore OS process runs (spans to a file),
and the two halves make one trace."""

from __future__ import annotations

from typing import Any

import pytest
from hive_framework import Hive, TaskFailed
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hive_plugin_otel.spans import QUEUE_WAIT_ENV, to_ns

from otel_helpers import of_task, wait_for_spans

pytestmark = [pytest.mark.redis, pytest.mark.slow]

tracer = trace.get_tracer("hive-plugin-otel tests")


def hexes(span: Any) -> tuple[str, str]:
    """(trace id, span id) of an SDK span as the file writes them."""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def enqueue_span(spans: InMemorySpanExporter, task_id: str) -> Any:
    """The one enqueue span this process recorded for ``task_id``."""
    found = [s for s in spans.get_finished_spans()
             if s.name.startswith("hive enqueue ") and (s.attributes or {}).get("hive.task_id") == task_id]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


async def test_the_run_continues_the_enqueuing_trace_and_handlers_nest_under_it(
    hive: Hive, traced_spore: Any, spans: InMemorySpanExporter
) -> None:
    # Given a spore process exporting its spans to a file
    path = await traced_spore()

    # When the test enqueues an async and a sync task inside a span of its own, and they complete
    with tracer.start_as_current_span("caller") as caller:
        async_id = await hive.submit("otel.echo", {"text": "hi"})
        sync_id = await hive.submit("otel.sync_echo", {"text": "ho"})
    echoed = await hive.result(async_id, timeout=30)
    assert (await hive.result(sync_id, timeout=30)) == {"text": "ho"}

    # Then each enqueue span is a PRODUCER child of the caller's span, and its context went with the task
    caller_trace, caller_id = hexes(caller)
    for task_id, task_type in ((async_id, "otel.echo"), (sync_id, "otel.sync_echo")):
        enqueued = enqueue_span(spans, task_id)
        assert enqueued.name == f"hive enqueue {task_type}"
        assert enqueued.kind == trace.SpanKind.PRODUCER
        assert enqueued.parent is not None and f"{enqueued.parent.span_id:016x}" == caller_id
        trace_id, enqueue_id = hexes(enqueued)
        assert trace_id == caller_trace
        stored = await hive.status(task_id)
        assert stored is not None
        version, carried_trace, carried_parent, flags = stored.headers["traceparent"].split("-")
        assert (version, carried_trace, carried_parent) == ("00", trace_id, enqueue_id)
        assert int(flags, 16) & 0x01  # sampled

        # and on the spore, the run span is a CONSUMER child of the enqueue span, in the same trace
        work, run_name = f"{task_type} work", f"hive run {task_type}"
        written = wait_for_spans(path, lambda s, t=task_id, r=run_name, w=work: bool(of_task(s, t, r))
                                 and any(x["name"] == w for x in s), what=f"the spans of {task_type}")
        [run] = of_task(written, task_id, run_name)
        assert (run["trace_id"], run["parent_id"], run["kind"]) == (trace_id, enqueue_id, "CONSUMER")
        assert run["status"] == "UNSET" and run["attributes"]["hive.outcome"] == "completed"
        assert run["attributes"]["messaging.system"] == "hive"
        assert run["attributes"]["hive.attempt"] == 1
        assert run["attributes"]["hive.node_id"] == stored.assigned_node
        # (the queue it was taken from: a finished record no longer names it)
        assert run["attributes"]["hive.queue"] == hive.broker.engine.queue_for(stored.priority, None, task_type)

        # and the queue wait is a child of the enqueue span, from the enqueue to the start of the run
        [wait] = of_task(written, task_id, f"hive queue wait {task_type}")
        assert (wait["trace_id"], wait["parent_id"]) == (trace_id, enqueue_id)
        assert stored.started_at is not None
        assert (wait["start"], wait["end"]) == (to_ns(stored.created_at), to_ns(stored.started_at))
        assert wait["start"] <= enqueued.start_time and wait["end"] <= run["start"]

        # and the handler's own span (async handler and sync one in its worker thread) nests under the run span
        [mine] = [x for x in written if x["name"] == work]
        assert (mine["trace_id"], mine["parent_id"]) == (trace_id, run["span_id"])
    assert echoed["trace_id"] == caller_trace


async def test_a_retried_attempt_and_a_failure_are_errors_with_their_exceptions(
    hive: Hive, traced_spore: Any, spans: InMemorySpanExporter
) -> None:
    # Given a spore process, a task that fails its first attempt only and one that always fails
    path = await traced_spore()
    flaky_id = await hive.submit("otel.flaky", {})
    boom_id = await hive.submit("otel.boom", {})
    assert await hive.result(flaky_id, timeout=30) == "second attempt"
    with pytest.raises(TaskFailed):
        await hive.result(boom_id, timeout=30)
    written = wait_for_spans(
        path, lambda s: len(of_task(s, flaky_id, "hive run otel.flaky")) == 2
        and len(of_task(s, boom_id, "hive run otel.boom")) == 1, what="the run spans of both tasks"
    )

    # Then the flaky task's first attempt is an ERROR span with the exception, its second a completed one,
    # both children of the one enqueue span
    trace_id, enqueue_id = hexes(enqueue_span(spans, flaky_id))
    first, second = of_task(written, flaky_id, "hive run otel.flaky")
    for run in (first, second):
        assert (run["trace_id"], run["parent_id"]) == (trace_id, enqueue_id)
    assert first["attributes"]["hive.attempt"] == 1 and second["attributes"]["hive.attempt"] == 2
    assert first["status"] == "ERROR" and first["description"] == "RuntimeError: first attempt fails"
    assert first["attributes"]["hive.outcome"] == "retrying" and first["attributes"]["hive.retry_delay_s"] > 0
    [event] = first["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert event["attributes"]["exception.message"] == "first attempt fails"
    assert second["status"] == "UNSET" and second["attributes"]["hive.outcome"] == "completed"
    assert second["events"] == []
    # a retry waits in the queue too, but only the first attempt's wait is a span of its own
    assert len(of_task(written, flaky_id, "hive queue wait otel.flaky")) == 1

    # and the failed task's only attempt is an ERROR span with the exception
    [failed] = of_task(written, boom_id, "hive run otel.boom")
    assert failed["trace_id"] == hexes(enqueue_span(spans, boom_id))[0]
    assert failed["status"] == "ERROR" and failed["description"] == "ValueError: boom"
    assert failed["attributes"]["hive.outcome"] == "failed"
    assert [(e["name"], e["attributes"]["exception.type"], e["attributes"]["exception.message"])
            for e in failed["events"]] == [("exception", "ValueError", "boom")]


async def test_a_spore_told_to_record_queue_waits_as_attributes_puts_the_wait_on_the_run_span(
    hive: Hive, traced_spore: Any, spans: InMemorySpanExporter
) -> None:
    # Given a spore process started with OTEL_PYTHON_HIVE_QUEUE_WAIT=attribute
    path = await traced_spore({QUEUE_WAIT_ENV: "attribute"})

    # When a task runs on it
    task_id = await hive.submit("otel.echo", {"text": "hi"})
    await hive.result(task_id, timeout=30)
    written = wait_for_spans(path, lambda s: bool(of_task(s, task_id, "hive run otel.echo")), what="the run span")

    # Then its run span carries the wait, from the enqueue to the start, and no queue-wait span was made
    [run] = of_task(written, task_id, "hive run otel.echo")
    stored = await hive.status(task_id)
    assert stored is not None and stored.started_at is not None
    waited = (to_ns(stored.started_at) - to_ns(stored.created_at)) / 1e9
    assert run["attributes"]["hive.queue_wait_s"] == pytest.approx(waited, abs=1e-6)
    assert of_task(written, task_id, "hive queue wait otel.echo") == []
