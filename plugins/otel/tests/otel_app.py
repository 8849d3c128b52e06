"""The app spores of the tests load (``--app otel_app``): an SDK TracerProvider exporting to a file, and task types.

The provider is set only when ``OTEL_TEST_SPANS_FILE`` names the file, i.e. in the spore processes; a test
process that imports this module (for the task types' options) keeps its own in-memory provider.
"""

from __future__ import annotations

import os
from typing import Any

from hive_framework import TaskContext, task
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_helpers import SPANS_ENV, JsonLinesExporter

if os.environ.get(SPANS_ENV):
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-test-spore"}))
    # Simple, not batched: a span is in the file when it ends, so tests poll the file, never sleep.
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ[SPANS_ENV])))
    trace.set_tracer_provider(provider)

tracer = trace.get_tracer("otel_app")


@task("otel.echo", max_retries=0)
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """An async handler with a span of its own: it should nest under the run span."""
    with tracer.start_as_current_span("otel.echo work") as span:
        span.set_attribute("text", str(payload.get("text", "")))
        return {"text": payload.get("text"), "trace_id": f"{span.get_span_context().trace_id:032x}"}


@task("otel.sync_echo", max_retries=0)
def sync_echo(payload: dict[str, Any]) -> dict[str, Any]:
    """A sync handler (run in a worker thread) with a span of its own: it should nest under the run span too."""
    with tracer.start_as_current_span("otel.sync_echo work"):
        return {"text": payload.get("text")}


@task("otel.flaky", max_retries=1)
async def flaky(payload: dict[str, Any], context: TaskContext) -> str:
    """Fails its first attempt, completes the second."""
    if context.task.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt"


@task("otel.boom", max_retries=0)
async def boom(payload: dict[str, Any]) -> None:
    """Always fails, with no retry."""
    raise ValueError("boom")
