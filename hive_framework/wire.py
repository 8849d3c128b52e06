"""The one cattrs converter: attrs models <-> JSON bytes. JSON only; nothing is ever unpickled."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from .errors import WireError

T = TypeVar("T")

converter = make_converter(forbid_extra_keys=False)
#: The same encoding without the fields that hold their default: what is stored for long (finished task
#: records) is kept small, and ``converter`` reads it back whole (a missing field takes its default).
compact_converter = make_converter(forbid_extra_keys=False, omit_if_default=True)


def to_plain(obj: Any) -> Any:
    """A model (or any supported value) as plain JSON-ready data."""
    return converter.unstructure(obj)


def dumps(obj: Any, *, omit_defaults: bool = False) -> bytes:
    """Serialise a model or plain value to compact JSON bytes; refuses what JSON cannot hold.

    ``omit_defaults`` leaves out the fields that hold their default (for records kept long; see
    ``compact_converter``)."""
    try:
        plain = (compact_converter if omit_defaults else converter).unstructure(obj)
        return json.dumps(plain, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__} as JSON: {exc}") from exc


def loads(data: bytes | str, cls: type[T]) -> T:
    """Decode JSON bytes into ``cls``; any malformed input raises :class:`WireError` naming the model."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise WireError(f"{cls.__name__}: not valid JSON ({exc})") from exc
    return structure(raw, cls)


def structure(raw: Any, cls: type[T]) -> T:
    """Plain data into ``cls``, with a one-line :class:`WireError` on any mismatch."""
    try:
        return converter.structure(raw, cls)
    except cattrs.BaseValidationError as exc:
        details = "; ".join(cattrs.transform_error(exc))
        raise WireError(f"{cls.__name__}: {details}") from exc
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        raise WireError(f"{cls.__name__}: {exc}") from exc


def json_size(value: Any) -> int:
    """Bytes ``value`` takes as compact JSON; raises :class:`WireError` when it is not JSON data."""
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"not JSON data: {exc}") from exc
