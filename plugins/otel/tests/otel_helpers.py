"""Span records shared by the test process and the spore processes: a JSON-lines exporter and its reader."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

TESTS_DIR = Path(__file__).resolve().parent
#: The test app module spores load (``--app otel_app``; the tests folder goes on their PYTHONPATH).
APP = "otel_app"
#: Where a spore process of the tests writes its finished spans, one JSON object a line.
SPANS_ENV = "OTEL_TEST_SPANS_FILE"  # not HIVE_*: hive refuses settings it does not know


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The parts of a finished span the tests check, as JSON data (ids in lowercase hex, as on the wire)."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "status": span.status.status_code.name,
        "description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "start": span.start_time,
        "end": span.end_time,
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one JSON line (what the spore processes export with)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s)) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as sink:
            sink.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is buffered."""


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans written so far (a last line still being written is left for the next read)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def wait_for_spans(path: Path, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0,
                   what: str = "spans") -> list[dict[str, Any]]:
    """Poll the file until ``ready(spans)``; fail with what was there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(path)
        if ready(spans):
            return spans
        if time.monotonic() > deadline:
            names = [(s["name"], s["attributes"].get("hive.task_id"), s["attributes"].get("hive.outcome"))
                     for s in spans]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; the spore wrote {names}")
        time.sleep(0.02)


def of_task(spans: list[dict[str, Any]], task_id: str, name: str) -> list[dict[str, Any]]:
    """The spans named ``name`` of one task, by attempt."""
    found = [s for s in spans if s["name"] == name and s["attributes"].get("hive.task_id") == task_id]
    return sorted(found, key=lambda s: s["attributes"].get("hive.attempt", 0))
