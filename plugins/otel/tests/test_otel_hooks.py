"""The hooks as hive calls them (``Kernel.run_lifecycle``), without Redis: spans, current context, bounded state."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from hive_framework import Kernel, TaskMessage, TaskStatus
from hive_framework.models import utcnow
from hive_framework.testing import async_wait_until, fast_config
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hive_plugin_otel import Attempts, attempts
from hive_plugin_otel.spans import QUEUE_WAIT_ENV, QUEUE_WAIT_MODES, queue_wait_mode

NOWHERE = "redis://127.0.0.1:1/0"  # these kernels never connect
tracer = trace.get_tracer("hive-plugin-otel tests")


def kernel(**overrides: Any) -> Kernel:
    return Kernel(fast_config(NOWHERE, **overrides))


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def message(task_id: str = "t1", attempt: int = 1, **fields: Any) -> TaskMessage:
    started = utcnow()
    return TaskMessage(task_id=task_id, task_type="resize", attempt=attempt, queue="venom:high",
                       created_at=started - timedelta(seconds=2), started_at=started, **fields)


def test_the_plugin_is_found_through_its_entry_point() -> None:
    assert "otel" in kernel().plugin_names()


async def test_enqueue_is_a_producer_span_under_the_callers_span(spans: InMemorySpanExporter) -> None:
    hive = kernel()
    task = message(attempt=0)
    with tracer.start_as_current_span("caller") as caller:
        await hive.run_lifecycle("before_enqueue", task=task, config=hive.config)
    [enqueued] = named(spans, "hive enqueue resize")
    assert enqueued.kind == SpanKind.PRODUCER and enqueued.parent is not None
    assert enqueued.parent.span_id == caller.get_span_context().span_id
    assert enqueued.attributes is not None and enqueued.attributes["hive.task_id"] == "t1"
    assert enqueued.attributes["messaging.destination.name"] == "venom:high"
    assert f"-{enqueued.context.span_id:016x}-" in task.headers["traceparent"]


async def test_with_no_current_span_a_trace_context_the_caller_put_in_the_headers_is_continued(
    spans: InMemorySpanExporter,
) -> None:
    hive = kernel()
    upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    task = message(attempt=0, headers={"traceparent": upstream})
    await hive.run_lifecycle("before_enqueue", task=task, config=hive.config)
    [enqueued] = named(spans, "hive enqueue resize")
    assert enqueued.parent is not None and f"{enqueued.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert task.headers["traceparent"] != upstream  # now names the enqueue span, in the same trace
    assert task.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


async def test_disabling_the_plugin_by_name_leaves_tasks_untraced(spans: InMemorySpanExporter) -> None:
    hive = kernel(disable_plugins=("otel",))
    assert "otel" not in hive.plugin_names()
    task = message(attempt=0)
    with tracer.start_as_current_span("caller"):
        await hive.run_lifecycle("before_enqueue", task=task, config=hive.config)
    assert task.headers == {} and named(spans, "hive enqueue resize") == []


async def test_the_run_span_is_current_for_the_handler_and_detached_after(spans: InMemorySpanExporter) -> None:
    # Given a task enqueued under a span (its headers carry the enqueue span's context)
    hive = kernel()
    task = message()
    await hive.run_lifecycle("before_enqueue", task=task, config=hive.config)
    [enqueued] = named(spans, "hive enqueue resize")

    async def attempt() -> tuple[trace.Span, trace.Span]:
        """What a spore's attempt task does: before_task, the handler, a closing hook, in one asyncio task."""
        await hive.run_lifecycle("before_task", task=task, node_id="node-1")
        with tracer.start_as_current_span("handler") as handler:
            await asyncio.sleep(0)
        assert trace.get_current_span() is not handler
        during = trace.get_current_span()
        await hive.run_lifecycle("after_task", task=task, result=None, node_id="node-1")
        return during, trace.get_current_span()

    # When an attempt runs in its own asyncio task
    during, after = await asyncio.create_task(attempt())

    # Then the run span was current until the closing hook, and nothing is current after it
    [run] = named(spans, "hive run resize")
    assert during.get_span_context().span_id == run.context.span_id
    assert not after.get_span_context().is_valid
    [handler] = named(spans, "handler")
    assert handler.parent is not None and handler.parent.span_id == run.context.span_id
    # and the run and queue-wait spans are children of the enqueue span; the wait ends when the run starts
    [wait] = named(spans, "hive queue wait resize")
    for span in (run, wait):
        assert span.parent is not None and span.parent.span_id == enqueued.context.span_id
        assert span.context.trace_id == enqueued.context.trace_id
    assert run.kind == SpanKind.CONSUMER and run.status.status_code == StatusCode.UNSET
    assert run.attributes is not None and run.attributes["hive.outcome"] == "completed"
    assert run.attributes["hive.node_id"] == "node-1" and run.attributes["hive.attempt"] == 1
    assert wait.end_time is not None and wait.start_time is not None
    assert wait.end_time - wait.start_time == 2_000_000_000
    assert len(attempts) == 0


async def test_a_delayed_task_waits_from_its_eta_and_a_skewed_clock_never_makes_a_negative_wait(
    spans: InMemorySpanExporter,
) -> None:
    hive = kernel()
    delayed = message("delayed")
    delayed.eta = delayed.created_at + timedelta(seconds=1.5)
    skewed = message("skewed")
    skewed.created_at = skewed.started_at + timedelta(seconds=3)  # type: ignore[operator]
    for task in (delayed, skewed):
        await asyncio.create_task(hive.run_lifecycle("before_task", task=task, node_id="n"))
        await hive.run_lifecycle("after_task", task=task, result=None, node_id="n")
    waits = {s.attributes["hive.task_id"]: s for s in named(spans, "hive queue wait resize")}  # type: ignore[index]
    assert waits["delayed"].end_time - waits["delayed"].start_time == 500_000_000  # type: ignore[operator]
    assert waits["skewed"].end_time == waits["skewed"].start_time
    assert waits["skewed"].attributes["hive.clock_skew_s"] == pytest.approx(3.0)  # type: ignore[index]


async def test_the_queue_wait_as_an_attribute_is_on_the_first_run_span_and_no_wait_span_is_made(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the plugin set to record queue waits as attributes (OTEL_PYTHON_HIVE_QUEUE_WAIT=attribute)
    monkeypatch.setattr(attempts, "queue_wait", "attribute")
    hive = kernel()
    first, retried = message("first"), message("retried", attempt=2)
    skewed = message("skewed")
    skewed.created_at = skewed.started_at + timedelta(seconds=3)  # type: ignore[operator]
    for task in (first, retried, skewed):
        await asyncio.create_task(hive.run_lifecycle("before_task", task=task, node_id="n"))
        await hive.run_lifecycle("after_task", task=task, result=None, node_id="n")

    # Then no queue-wait span is made; the first attempt's run span carries the wait, a retry's none
    assert named(spans, "hive queue wait resize") == []
    runs = {s.attributes["hive.task_id"]: s.attributes for s in named(spans, "hive run resize")}  # type: ignore
    assert runs["first"]["hive.queue_wait_s"] == pytest.approx(2.0)
    assert "hive.clock_skew_s" not in runs["first"]
    assert "hive.queue_wait_s" not in runs["retried"]
    # and a spore whose clock is behind records an empty wait and the skew, never a negative wait
    assert runs["skewed"]["hive.queue_wait_s"] == 0.0
    assert runs["skewed"]["hive.clock_skew_s"] == pytest.approx(3.0)


@given(st.text(max_size=20))
def test_any_queue_wait_setting_gives_a_mode_and_one_naming_none_falls_back_to_spans(value: str) -> None:
    mode = queue_wait_mode({QUEUE_WAIT_ENV: value})
    assert mode in QUEUE_WAIT_MODES
    assert mode == (value.strip().lower() if value.strip().lower() in QUEUE_WAIT_MODES else "span")


def test_a_queue_wait_setting_naming_no_mode_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert queue_wait_mode({QUEUE_WAIT_ENV: "atribute"}) == "span"
    assert f"{QUEUE_WAIT_ENV}='atribute' is not one of span, attribute" in caplog.text
    assert queue_wait_mode({}) == "span" and queue_wait_mode({QUEUE_WAIT_ENV: " Attribute "}) == "attribute"


async def test_a_retry_and_a_failure_are_errors_with_the_exception(spans: InMemorySpanExporter) -> None:
    hive = kernel()
    first, last = message(attempt=1), message(attempt=2)

    async def attempt(task: TaskMessage, closing: str, **kwargs: Any) -> None:
        await hive.run_lifecycle("before_task", task=task, node_id="n")
        await hive.run_lifecycle(closing, task=task, node_id="n", **kwargs)

    await asyncio.create_task(attempt(first, "on_retry", error="KeyError: 'x'", exception=KeyError("x"), delay=0.5))
    await asyncio.create_task(attempt(last, "on_task_failure", error="OSError: disk", exception=OSError("disk")))
    retried, failed = sorted(named(spans, "hive run resize"), key=lambda s: s.attributes["hive.attempt"])  # type: ignore
    assert retried.status.status_code == StatusCode.ERROR and retried.status.description == "KeyError: 'x'"
    assert retried.attributes["hive.retry_delay_s"] == 0.5  # type: ignore[index]
    assert [e.attributes["exception.type"] for e in retried.events] == ["KeyError"]  # type: ignore[index]
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["hive.outcome"] == "failed"  # type: ignore
    assert [e.attributes["exception.message"] for e in failed.events] == ["disk"]  # type: ignore[index]
    assert len(named(spans, "hive queue wait resize")) == 1  # the first attempt's only
    assert len(attempts) == 0


async def test_an_attempt_a_cancellation_won_over_ends_as_cancelled(spans: InMemorySpanExporter) -> None:
    # The spore's hooks see the task as recorded: cancelled when the cancel landed before the outcome
    hive = kernel()
    done, failed = message("done", status=TaskStatus.CANCELLED), message("failed", status=TaskStatus.CANCELLED)

    async def attempt(task: TaskMessage, closing: str, **kwargs: Any) -> None:
        await hive.run_lifecycle("before_task", task=task, node_id="n")
        await hive.run_lifecycle(closing, task=task, node_id="n", **kwargs)

    await asyncio.create_task(attempt(done, "after_task", result=1))
    await asyncio.create_task(attempt(failed, "on_task_failure", error="OSError: disk", exception=OSError("disk")))
    runs = {s.attributes["hive.task_id"]: s for s in named(spans, "hive run resize")}  # type: ignore[index]
    assert {k: s.attributes["hive.outcome"] for k, s in runs.items()} == {"done": "cancelled", "failed": "cancelled"}  # type: ignore[index]
    assert runs["done"].status.status_code != StatusCode.ERROR
    assert runs["failed"].status.status_code == StatusCode.ERROR  # the attempt itself did fail


async def test_a_failure_with_no_attempt_run_here_is_still_an_error_span(spans: InMemorySpanExporter) -> None:
    # A spore fails a task whose spores kept dying: on_task_failure with no before_task before it
    hive = kernel()
    task = message(attempt=4, headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    await hive.run_lifecycle("on_task_failure", task=task, error="spores kept dying", exception=None, node_id="n")
    [run] = named(spans, "hive run resize")
    assert run.status.status_code == StatusCode.ERROR and run.status.description == "spores kept dying"
    assert run.parent is not None and f"{run.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert run.events == ()


async def test_an_attempt_handed_back_without_a_closing_hook_is_ended_when_its_task_ends(
    spans: InMemorySpanExporter,
) -> None:
    # Given an attempt whose asyncio task ends with no closing hook (a stopping spore hands it back)
    hive = kernel()
    task = message("handed-back")
    await asyncio.create_task(hive.run_lifecycle("before_task", task=task, node_id="n"))

    # Then its span is ended as handed back, and the table forgets it
    async def ended() -> bool:
        return bool(named(spans, "hive run resize"))

    await async_wait_until(ended, timeout=5, what="the handed-back span ended")
    [run] = named(spans, "hive run resize")
    assert run.attributes is not None and run.attributes["hive.outcome"] == "handed_back"
    assert len(attempts) == 0


async def test_the_table_of_open_attempts_is_capped(spans: InMemorySpanExporter) -> None:
    table = Attempts(limit=3)

    async def open_five() -> None:
        for n in range(5):
            table.begin(message(f"t{n}"), "n")
        assert len(table) == 3
        for n in range(2, 5):
            assert table.end(message(f"t{n}"), "completed", None) is not None

    await asyncio.create_task(open_five())
    outcomes = {s.attributes["hive.task_id"]: s.attributes["hive.outcome"]  # type: ignore[index]
                for s in named(spans, "hive run resize")}
    assert outcomes == {"t0": "abandoned", "t1": "abandoned", "t2": "completed", "t3": "completed", "t4": "completed"}
    assert len(table) == 0



async def test_a_task_enqueued_by_a_handler_is_a_child_of_its_run_span(spans: InMemorySpanExporter) -> None:
    # Given an attempt running (its run span current), When its handler submits another task
    hive = kernel()
    parent, child = message("parent"), message("child", attempt=0)

    async def attempt() -> None:
        await hive.run_lifecycle("before_task", task=parent, node_id="n")
        await hive.run_lifecycle("before_enqueue", task=child, config=hive.config)
        await hive.run_lifecycle("after_task", task=parent, result=None, node_id="n")

    await asyncio.create_task(attempt())
    # Then the child's enqueue span is a child of the run span: a pipeline of tasks is one trace
    [run] = named(spans, "hive run resize")
    [enqueued] = named(spans, "hive enqueue resize")
    assert enqueued.parent is not None and enqueued.parent.span_id == run.context.span_id
    assert f"00-{run.context.trace_id:032x}-{enqueued.context.span_id:016x}-" in child.headers["traceparent"]
