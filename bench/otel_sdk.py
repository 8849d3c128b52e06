"""An OpenTelemetry SDK set up in a spore for bench/otel_cost.py (``--app bench.otel_sdk``).

A TracerProvider with a batch processor and an exporter that drops what it is given: the cost measured is
the plugin's spans and the SDK's work on them, not a network exporter's (which depends on the collector).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

EXPORTED = [0]


class Discard(SpanExporter):
    """Counts the spans and drops them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        EXPORTED[0] += len(spans)
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(BatchSpanProcessor(Discard()))
trace.set_tracer_provider(_provider)
