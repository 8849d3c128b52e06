"""W3C trace context in ``task.headers``: injected where a task is enqueued, extracted on the spore that runs it.

Headers come off the wire, so extraction never raises: anything that is not a valid trace context is ignored
and the spore starts a new trace instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from hive_framework import WireError, wire
from opentelemetry import propagate
from opentelemetry.context import Context

logger = logging.getLogger(__name__)

#: What hive lets a task's headers take as compact JSON (``MAX_HEADER_BYTES`` in hive_framework); past it,
#: hive puts back the headers as they were before every ``before_enqueue`` hook, this one's included.
HEADER_LIMIT = 8192
#: The W3C Trace Context headers: kept alone when everything the propagators write (baggage...) is too big.
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")


def extract_context(headers: object, base: Context | None = None) -> Context:
    """The context carried by ``headers`` on top of ``base`` (default: an empty one); ``base`` when there is none.

    Uses the global propagators (``OTEL_PROPAGATORS``, default W3C tracecontext and baggage). Non-text
    entries are skipped and a propagator that raises is logged: wire data can never fail a task.
    """
    start = base if base is not None else Context()
    if not headers or not isinstance(headers, Mapping):  # nothing to extract: skip the propagators' work
        return start
    carrier = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
    try:
        return propagate.extract(carrier, context=start)
    except Exception:  # a third-party propagator may raise on hostile input: start a new trace instead
        logger.warning("could not read the trace context of a task's headers; starting a new trace", exc_info=True)
        return start


def inject_context(headers: dict[str, str], context: Context) -> dict[str, str]:
    """Write ``context`` into ``headers`` with the global propagators; return what was written.

    When all of it would push the headers past hive's limit (a big baggage), only ``traceparent`` and
    ``tracestate`` are written; when even they do not fit, nothing is.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    carrier = {k: v for k, v in carrier.items() if isinstance(k, str) and k and isinstance(v, str)}
    for candidate in (carrier, {k: v for k, v in carrier.items() if k in TRACE_CONTEXT_KEYS}):
        if _fits({**headers, **candidate}):
            headers.update(candidate)
            return candidate
    logger.warning("task headers are too big to carry a trace context too (limit %d bytes); sent without it",
                   HEADER_LIMIT)
    return {}


def _fits(headers: dict[str, str]) -> bool:
    """Whether ``headers`` stay within hive's size limit (and are encodable text)."""
    try:
        return wire.json_size(headers) <= HEADER_LIMIT
    except WireError:
        return False
