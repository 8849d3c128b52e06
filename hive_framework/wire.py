"""The one cattrs converter: attrs models <-> JSON bytes. JSON only; nothing is ever unpickled."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from .errors import WireError

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _datetime_from(value: Any, _: Any) -> datetime:
    """An ISO 8601 text, or whole microseconds since the epoch (UTC) as the compact encoding writes them."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + value * _MICROSECOND
    raise ValueError(f"a time must be ISO 8601 text or microseconds since the epoch, not {value!r}")


def _microseconds(moment: datetime) -> int | str:
    """Whole microseconds since the epoch, exactly (a naive time is taken as UTC): 16 digits against ISO's 34.

    A time whose instant has no UTC datetime (the edges of years 1 and 9999 in a zone off UTC) stays ISO text,
    which the reader takes too: as microseconds it could not be read back."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.year in (1, 9999):
        try:
            moment.astimezone(UTC)
        except OverflowError:
            return moment.isoformat()
    return (moment - _EPOCH) // _MICROSECOND


converter = make_converter(forbid_extra_keys=False)
converter.register_structure_hook(datetime, _datetime_from)
#: The same encoding without the fields that hold their default, and times as microseconds since the epoch:
#: what is stored for long (finished task records) is kept small, and ``converter`` reads it back whole (a
#: missing field takes its default).
compact_converter = make_converter(forbid_extra_keys=False, omit_if_default=True)
compact_converter.register_structure_hook(datetime, _datetime_from)
compact_converter.register_unstructure_hook(datetime, _microseconds)


def to_plain(obj: Any) -> Any:
    """A model (or any supported value) as plain JSON-ready data."""
    return converter.unstructure(obj)


def dumps(obj: Any, *, omit_defaults: bool = False, leave_out: Collection[str] = ()) -> bytes:
    """Serialise a model or plain value to compact JSON bytes; refuses what JSON cannot hold.

    ``omit_defaults`` leaves out the fields that hold their default (for records kept long; see
    ``compact_converter``); ``leave_out`` names fields of a model not to write at all (read back as defaults)."""
    try:
        plain = (compact_converter if omit_defaults else converter).unstructure(obj)
        for name in leave_out:
            plain.pop(name, None)
        return json.dumps(plain, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__} as JSON: {exc}") from exc


def loads(data: bytes | str, cls: type[T], *, known: Mapping[str, Any] | None = None) -> T:
    """Decode JSON bytes into ``cls``; any malformed input raises :class:`WireError` naming the model.

    ``known``: fields the reader knows already (a task's id, from its key), taken when the data leaves them out."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise WireError(f"{cls.__name__}: not valid JSON ({exc})") from exc
    if known and isinstance(raw, dict):
        raw = {**known, **raw}
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
