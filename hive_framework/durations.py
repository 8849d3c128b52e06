"""Durations written by people (``30s``, ``5m``, ``1.5h``, ``1d`` or a bare number of seconds) as seconds.

Its own module at the bottom of the import graph: the broker (a task's ``delay=``) and the scheduler (a
schedule's ``every=``) both parse durations, and neither should have to import the other for it.
"""

from __future__ import annotations

import math
import re

_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?)?\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int, *, minimum: float = 0.0, what: str = "duration") -> float:
    """Seconds in a duration such as ``30s``, ``5m``, ``1.5h``, ``1d`` or a bare number of seconds;
    ValueError (naming ``what``) for anything else or for less than ``minimum`` seconds."""
    hint = f"bad {what} {value!r}: use a number of seconds or text such as '30s', '5m' or '1h'"
    if isinstance(value, bool):
        raise ValueError(hint)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(hint)
        seconds = float(match[1]) * _UNIT_SECONDS[(match[2] or "s")[0].lower()]
    if not math.isfinite(seconds):
        raise ValueError(hint)
    if seconds < minimum:
        if minimum == 0:
            raise ValueError(f"bad {what} {value!r}: it must not be negative")
        least = "one second" if minimum == 1 else f"{minimum:g} seconds"
        raise ValueError(f"bad {what} {value!r}: it must be at least {least}")
    return seconds
