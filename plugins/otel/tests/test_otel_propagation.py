"""The trace context in ``task.headers``: injected at enqueue, read back on the spore, and never trusted blindly."""

from __future__ import annotations

import re

import pytest
from hive_framework import TaskMessage, wire
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context

from hive_plugin_otel import attempts, extract_context, inject_context
from hive_plugin_otel.propagation import HEADER_LIMIT

tracer = trace.get_tracer("hive-plugin-otel tests")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


def remote_parent(headers: dict[str, str]) -> trace.SpanContext:
    return trace.get_current_span(extract_context(headers)).get_span_context()


def test_a_span_context_survives_the_round_trip_through_headers() -> None:
    # Given a span and a task's headers with an entry of the caller's
    with tracer.start_as_current_span("sender") as span:
        headers = {"tenant": "acme"}
        # When its context is injected, then read back as the spore reads it
        written = inject_context(headers, trace.set_span_in_context(span))
    extracted = remote_parent(headers)
    # Then the same trace and span come out, as a remote parent, and the caller's entry is untouched
    assert set(written) == {"traceparent"} and headers["tenant"] == "acme"
    sent = span.get_span_context()
    assert (extracted.trace_id, extracted.span_id, extracted.is_remote) == (sent.trace_id, sent.span_id, True)
    assert re.fullmatch(rf"00-{sent.trace_id:032x}-{sent.span_id:016x}-[0-9a-f]{{2}}", headers["traceparent"])


def test_baggage_travels_when_it_fits_and_is_dropped_when_it_does_not() -> None:
    with tracer.start_as_current_span("sender") as span:
        small = baggage.set_baggage("tenant", "acme", trace.set_span_in_context(span))
        big = baggage.set_baggage("blob2", "x" * 2500, baggage.set_baggage("blob1", "x" * 2500, small))
        # A small baggage is carried with the trace context
        headers: dict[str, str] = {}
        assert set(inject_context(headers, small)) == {"traceparent", "baggage"}
        # A big one would push the headers past hive's limit (which would undo every hook's headers): the trace
        # context alone is carried
        headers = {"note": "y" * (HEADER_LIMIT // 2)}
        assert set(inject_context(headers, big)) == {"traceparent"}
        assert wire.json_size(headers) <= HEADER_LIMIT
        # and headers already at the limit get nothing
        full = {"note": "z" * (HEADER_LIMIT - 20)}
        assert inject_context(full, big) == {} and full == {"note": "z" * (HEADER_LIMIT - 20)}


@pytest.mark.parametrize("traceparent", [
    "",
    "garbage",
    f"00-{'0' * 32}-{PARENT}-01",              # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",               # all-zero span id
    f"ff-{TRACE}-{PARENT}-01",                 # the forbidden version
    f"00-{TRACE.upper()}-{PARENT}-01",         # upper-case hex
    f"00-{TRACE[:-1]}-{PARENT}-01",            # a digit short
    f"00-{TRACE}-{PARENT}-01-extra",           # version 00 has exactly four fields
    f"00-{TRACE}-{PARENT}-0g",
    f"00_{TRACE}_{PARENT}_01",
    "00-" + "é" * 32 + f"-{PARENT}-01",
    VALID + "\x00",
    VALID * 300,
], ids=repr)
def test_a_malformed_traceparent_starts_a_new_trace(traceparent: str) -> None:
    # Given headers from the wire with a bad traceparent (and a hostile tracestate)
    headers = {"traceparent": traceparent, "tracestate": "=,,,=\x7f" * 50}
    # Then there is no parent in them, and a span started under them begins a new trace
    assert not remote_parent(headers).is_valid
    span = tracer.start_span("run", context=extract_context(headers))
    span.end()
    assert span.parent is None and f"{span.get_span_context().trace_id:032x}" != TRACE


def test_a_valid_traceparent_is_continued() -> None:
    # The control for the malformed cases above: the same headers with a good traceparent have a parent
    parent = remote_parent({"traceparent": VALID, "tracestate": "vendor=1"})
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (TRACE, PARENT)


def test_headers_that_are_not_text_are_ignored() -> None:
    assert not remote_parent({"traceparent": 12345, 7: VALID}).is_valid  # type: ignore[dict-item]
    assert extract_context(None) == Context()


traceparents = st.one_of(
    st.text(max_size=120),
    st.builds(lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}",
              st.text("0123456789abcdefABCDEF", min_size=1, max_size=3),
              st.text("0123456789abcdef-", min_size=0, max_size=34),
              st.text("0123456789abcdef", min_size=0, max_size=17),
              st.text("0123456789abcdefxyz", min_size=0, max_size=3),
              st.sampled_from(["", "-", "-00", " ", "\t"])),
)


@given(traceparent=traceparents, tracestate=st.text(max_size=200),
       extra=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=5))
def test_hostile_headers_never_raise_and_a_parent_always_comes_from_them(
    traceparent: str, tracestate: str, extra: dict[str, str]
) -> None:
    headers = {**extra, "traceparent": traceparent, "tracestate": tracestate}
    # When the spore reads them, and starts a span under what it read
    parent = remote_parent(headers)
    span = tracer.start_span("run", context=extract_context(headers))
    span.end()
    context = span.get_span_context()
    # Then either they held a trace context, continued as it is written there, or a new trace begins
    if parent.is_valid:
        assert f"{parent.trace_id:032x}" in traceparent and f"{parent.span_id:016x}" in traceparent
        assert context.trace_id == parent.trace_id and span.parent is not None
    else:
        assert span.parent is None
    assert context.is_valid


@given(traceparent=traceparents, tracestate=st.text(max_size=200), attempt=st.integers(0, 5))
def test_a_whole_attempt_on_hostile_headers_never_raises_and_leaves_nothing_open(
    traceparent: str, tracestate: str, attempt: int
) -> None:
    task = TaskMessage(task_id="hostile", task_type="t", attempt=attempt,
                       headers={"traceparent": traceparent, "tracestate": tracestate})
    run = attempts.begin(task, "node-1")
    assert attempts.end(task, "completed", None) is run
    assert len(attempts) == 0 and not run.is_recording()  # ended
