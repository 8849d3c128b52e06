"""The wire: every model round-trips through JSON, junk is only ever a WireError, ARQ jobs never use pickle."""

from __future__ import annotations

import enum
import json
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from arq.jobs import deserialize_job, serialize_job
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import BroadcastMessage, NodeInfo, TaskMessage, TaskStatus, WireError, wire
from hive_framework.engines.arq import job_deserializer, job_serializer
from hive_framework.models import BroadcastReply, TaskProgress

MODELS = [TaskMessage, NodeInfo, BroadcastMessage, BroadcastReply, TaskProgress]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
datetimes = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for one field type; new model fields are covered without touching this test."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return json_values
    if tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(),
        datetime: datetimes,
    }
    if tp in simple:
        return simple[tp]
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict and args[0] is str:
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=4)
    if isinstance(tp, type) and attrs.has(tp):  # a nested model
        return model_strategy(tp)
    raise NotImplementedError(f"test_wire has no strategy for the field type {tp!r}: add one")


def model_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in attrs.fields(cls)})


any_model = st.one_of(*(model_strategy(cls) for cls in MODELS))


@given(obj=any_model)
def test_every_model_round_trips_through_json(obj: Any) -> None:
    # Given any instance of a wire model
    # When dumped and loaded back as its class
    data = wire.dumps(obj)
    again = wire.loads(data, type(obj))
    # Then it is equal, and the bytes are plain JSON text (no pickle, no binary)
    assert again == obj
    assert isinstance(json.loads(data), dict)
    # And text works as well as bytes
    assert wire.loads(data.decode(), type(obj)) == obj


@given(obj=any_model)
def test_every_model_round_trips_without_its_default_fields(obj: Any) -> None:
    # Given any instance of a wire model, dumped without the fields that hold their default (finished records)
    data = wire.dumps(obj, omit_defaults=True)
    # Then the full decoder reads it back equal, and the bytes are never longer than the full form
    assert wire.loads(data, type(obj)) == obj
    assert len(data) <= len(wire.dumps(obj))


@pytest.mark.parametrize("moment", [datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
                                    datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=8)))])
def test_a_time_whose_instant_has_no_utc_datetime_is_stored_compact_as_text(moment: datetime) -> None:
    # Given a scheduled task whose time, in its own zone, is at the very edge of what a datetime holds
    message = TaskMessage(task_id="t1", task_type="echo", status=TaskStatus.SCHEDULED, eta=moment)
    # When stored compact (as microseconds since the epoch it would not read back: the UTC instant overflows)
    data = wire.dumps(message, omit_defaults=True)
    # Then that time stays ISO text, and the record reads back equal
    assert json.loads(data)["eta"] == moment.isoformat()
    assert wire.loads(data, TaskMessage) == message


@given(moment=datetimes)
def test_a_compact_time_is_whole_microseconds_and_reads_back_the_same_instant(moment: datetime) -> None:
    # Given a task finished at any instant, in any time zone, stored compact
    message = TaskMessage(task_id="t1", task_type="echo", status=TaskStatus.COMPLETED, completed_at=moment)
    stored = json.loads(wire.dumps(message, omit_defaults=True))
    # Then its time is an integer, and it reads back as exactly that instant
    assert isinstance(stored["completed_at"], int)
    assert wire.loads(json.dumps(stored), TaskMessage).completed_at == moment


@pytest.mark.parametrize("value", [True, 1.5, "yesterday", 10**30, [1]])
def test_a_time_that_is_neither_iso_text_nor_whole_microseconds_is_a_wire_error(value: Any) -> None:
    # Given a record whose time is a boolean, a fraction, free text, out of range or a list
    data = json.dumps({"task_id": "t1", "task_type": "echo", "created_at": value})
    # Then reading it fails with a one-line WireError naming the model
    with pytest.raises(WireError, match="TaskMessage"):
        wire.loads(data, TaskMessage)


@given(task_id=st.text(min_size=1, max_size=40))
def test_a_finished_record_without_its_id_reads_back_with_the_id_of_its_key(task_id: str) -> None:
    # Given a finished task stored as the broker stores it (no id: its key has it)
    message = TaskMessage(task_id=task_id, task_type="echo", status=TaskStatus.COMPLETED, result=[1])
    data = wire.dumps(message, omit_defaults=True, leave_out=("task_id",))
    assert "task_id" not in json.loads(data)
    # Then read under its key's id it is the task again, and an id the data has wins over the one given
    assert wire.loads(data, TaskMessage, known={"task_id": task_id}) == message
    assert wire.loads(wire.dumps(message), TaskMessage, known={"task_id": "other"}).task_id == task_id


def test_minimal_task_message_gets_its_defaults_on_load() -> None:
    # Given only the required keys (as an older or foreign writer might send)
    message = wire.loads(b'{"task_id": "t1", "task_type": "echo"}', TaskMessage)
    # Then the rest are the model's defaults and extra keys are tolerated
    assert (message.status, message.attempt, message.payload) == (TaskStatus.PENDING, 0, {})
    assert wire.loads(b'{"task_id": "t1", "task_type": "echo", "from_the_future": 1}', TaskMessage).task_id == "t1"


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@given(data=st.binary(max_size=200))
def test_junk_bytes_raise_only_wire_error(cls: type, data: bytes) -> None:
    # Given arbitrary bytes read from Redis
    try:
        wire.loads(data, cls)
    except WireError as exc:
        # Then the only failure is a WireError naming the model
        assert cls.__name__ in str(exc)


def junk_objects(cls: type) -> st.SearchStrategy[Any]:
    """Arbitrary JSON, and objects that use the model's real keys with arbitrary values."""
    keys = st.sampled_from([f.name for f in attrs.fields(cls)]) | st.text(max_size=6)
    with_nan = json_values | st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400])
    return json_values | st.dictionaries(keys, with_nan, max_size=8)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@given(data=st.data())
def test_junk_json_raises_only_wire_error(cls: type, data: st.DataObject) -> None:
    # Given any JSON value (even NaN/Infinity, which Python's json reads) where a model is expected
    raw = json.dumps(data.draw(junk_objects(cls)))
    # When decoded, Then it is either a valid instance or a WireError, never another exception
    try:
        value = wire.loads(raw, cls)
    except WireError as exc:
        assert cls.__name__ in str(exc)
    else:
        assert isinstance(value, cls)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b"\xff\xfe",
        b'{"task_id": "t", "task_type": "x", "status": "exploded"}',
        b'{"task_id": "t", "task_type": "x", "created_at": "yesterday"}',
        b'{"task_id": "t", "task_type": "x", "attempt": Infinity}',
        b'{"task_id": "t", "task_type": "x", "payload": [1, 2]}',
        b'{"task_type": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["empty", "null", "list", "not-utf8", "bad-enum", "bad-date", "infinity", "payload-list", "missing-id",
         "deep-nesting"],
)
def test_known_bad_task_messages_are_wire_errors(raw: bytes) -> None:
    # Given a stored task that is malformed in a specific way, Then it is one WireError naming the model
    with pytest.raises(WireError, match="TaskMessage"):
        wire.loads(raw, TaskMessage)


def test_dumps_refuses_what_json_cannot_hold() -> None:
    # Given payloads with NaN, an arbitrary object and too-deep nesting
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for payload in ({"x": float("nan")}, {"x": object()}, {"x": deep}):
        # Then encoding is a WireError, and json_size agrees
        with pytest.raises(WireError):
            wire.dumps(TaskMessage(task_id="t", task_type="x", payload=payload))
        with pytest.raises(WireError):
            wire.json_size(payload)


@given(value=json_values)
def test_json_size_is_the_compact_utf8_length(value: Any) -> None:
    assert wire.json_size(value) == len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


# --- ARQ job (de)serializer ---------------------------------------------------------------------------


def test_arq_job_round_trips_through_the_json_serializer() -> None:
    # Given a job as the broker writes it
    data = serialize_job("hive.run", ("task-1",), {}, 3, 1_700_000_000_000, serializer=job_serializer)
    # Then it is JSON, and ARQ reads it back with the hive deserializer
    assert data.startswith(b"{")
    job = deserialize_job(data, deserializer=job_deserializer)
    assert (job.function, list(job.args), job.job_try, job.enqueue_time.year) == ("hive.run", ["task-1"], 3, 2023)


def test_exceptions_and_datetimes_are_encoded_as_data_never_pickled() -> None:
    # Given an ARQ result that holds an exception and a datetime
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    data = job_serializer({"s": False, "r": ValueError("bad input"), "st": when})
    # Then the bytes are JSON, with the exception as type and message
    decoded = job_deserializer(data)
    assert decoded["r"] == {"error_type": "ValueError", "message": "bad input"}
    assert decoded["st"] == when.isoformat()
    assert not data.startswith(b"\x80")  # the pickle protocol marker


def test_arbitrary_objects_are_refused_not_pickled() -> None:
    # Given an object JSON cannot hold, Then the serializer refuses it
    with pytest.raises(TypeError, match="not JSON data"):
        job_serializer({"r": object()})


@given(value=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_job_serializer_round_trips_json_objects(value: dict[str, Any]) -> None:
    assert job_deserializer(job_serializer(value)) == value


@given(data=st.binary(max_size=100) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_job_deserializer_raises_only_value_error_on_junk(data: bytes) -> None:
    # Given arbitrary bytes or JSON found where an ARQ job should be
    try:
        value = job_deserializer(data)
    except ValueError:
        return  # Then it fails as ValueError (which ARQ wraps as DeserializationError)...
    assert isinstance(value, dict)  # ...or it really is a JSON object
