"""What a caller asks to enqueue (:class:`TaskSpec`) and its validation into a :class:`TaskMessage`.

Validation is complete before anything is written: a bad spec is an :class:`InvalidTask` naming the problem.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from .. import wire
from ..durations import parse_duration
from ..errors import InvalidTask, UnknownTaskType, WireError
from ..models import TaskMessage, utcnow
from ..policies import parse_priority
from ..tasks import TASK_NAME_RE

if TYPE_CHECKING:
    from ..kernel import Kernel


#: The longest task id accepted, in characters.
MAX_TASK_ID_LENGTH = 200


def check_task_id(task_id: object) -> str:
    """A task id is any valid Unicode text without control characters, 1 to :data:`MAX_TASK_ID_LENGTH`
    characters, not only spaces; anything else is refused with one line (:class:`InvalidTask`)."""
    if not isinstance(task_id, str) or not task_id.strip():
        raise InvalidTask(f"task_id must be a non-empty string, got {task_id!r}")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise InvalidTask(f"task_id is {len(task_id)} characters long; at most {MAX_TASK_ID_LENGTH} are allowed")
    for position, char in enumerate(task_id):
        category = unicodedata.category(char)
        if category == "Cc":
            raise InvalidTask(f"task_id holds a control character {char!r} at position {position}; ids may not")
        if category == "Cs":
            raise InvalidTask(f"task_id holds a lone surrogate {char!r} at position {position}: not valid Unicode")
    return task_id


#: How deeply a payload may nest (objects and arrays); Redis's Lua JSON decoder stops at 1,000.
MAX_PAYLOAD_DEPTH = 100


def check_depth(value: Any, what: str) -> None:
    """Refuse JSON data nested deeper than :data:`MAX_PAYLOAD_DEPTH` levels, with one line."""
    level, depth = [value], 0
    while True:
        containers = [item for item in level if isinstance(item, dict | list | tuple)]
        if not containers:
            return
        depth += 1
        if depth > MAX_PAYLOAD_DEPTH:
            break
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    raise InvalidTask(f"{what} is nested more than {MAX_PAYLOAD_DEPTH} levels deep; flatten it")


@attrs.frozen(kw_only=True)
class TaskSpec:
    """One task to enqueue in a batch (:meth:`MessageBroker.enqueue_many`)."""

    task_type: str
    payload: dict[str, Any] | None = None
    priority: int | str | None = None
    task_id: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    requirements: dict[str, Any] | None = None
    node: str | None = None
    job_id: str | None = None
    depends_on: Sequence[str] | None = None
    #: Payloads run one after another by a single task (map-reduce ``chunk_size``).
    chunk: Sequence[dict[str, Any]] | None = None
    #: How long the task may wait for an online spore that serves its type (None: the type's, else no limit).
    wait_timeout: float | None = None
    #: Accept a task type no spore has ever advertised and this process does not know (else UnknownTaskType).
    allow_unknown: bool = False
    #: Text metadata carried with the task (``before_enqueue`` impls may add more).
    headers: Mapping[str, str] | None = None
    #: Idempotency key: while one is held (HIVE_IDEMPOTENCY_WINDOW from the first submit), submitting
    #: with it again makes nothing and answers the first task's id.
    key: str | None = None
    #: Run no sooner than this long after the submit: seconds, or text such as "30s", "5m", "1h".
    delay: float | str | None = None
    #: Run no sooner than this moment: a timezone-aware datetime (or ISO 8601 text with an offset).
    eta: datetime | str | None = None


#: The longest delay accepted (about ten years), in seconds.
MAX_DELAY_S = 10 * 366 * 86400.0


def due_time(delay: object, eta: object, now: datetime | None = None) -> datetime | None:
    """When a task submitted with ``delay`` or ``eta`` is due (``None``: at once); InvalidTask naming the problem.

    ``delay`` is seconds or duration text (``"30s"``, ``"5m"``, ``"1h"``), never negative; ``eta`` a
    timezone-aware datetime or ISO 8601 text with an offset. A moment already past is due at once.
    """
    if delay is not None and eta is not None:
        raise InvalidTask("give delay or eta, not both")
    now = now or utcnow()
    if delay is not None:
        try:
            seconds = parse_duration(delay, what="delay")  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidTask(str(exc)) from None
        if seconds > MAX_DELAY_S:
            raise InvalidTask(f"bad delay {delay!r}: at most {MAX_DELAY_S:g} seconds (about ten years)")
        return now + timedelta(seconds=seconds) if seconds > 0 else None
    if eta is None:
        return None
    if isinstance(eta, str):
        try:
            eta = datetime.fromisoformat(eta.strip())
        except ValueError:
            raise InvalidTask(f"bad eta {eta!r}: use ISO 8601 with a UTC offset, such as "
                              "'2030-01-31T09:00:00+00:00'") from None
    if not isinstance(eta, datetime):
        raise InvalidTask(f"bad eta {eta!r}: use a timezone-aware datetime, got {type(eta).__name__}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise InvalidTask(f"bad eta {eta.isoformat()!r}: it has no time zone; use a timezone-aware datetime "
                          "(datetime.now(UTC) + ...) or text with an offset ('+00:00')")
    if eta - now > timedelta(seconds=MAX_DELAY_S):
        raise InvalidTask(f"bad eta {eta.isoformat()!r}: more than about ten years ahead")
    return eta.astimezone(UTC)


def check_key(key: object) -> str:
    """``key`` if it can be an idempotency key (1-200 characters, no control characters), else InvalidTask."""
    if not isinstance(key, str) or not 0 < len(key) <= 200 or any(ch < " " or ch == "\x7f" for ch in key):
        raise InvalidTask(f"bad idempotency key {key!r}: use 1-200 characters, none of them control characters")
    return key


def build_message(kernel: Kernel, spec: TaskSpec, remote: Mapping[str, Mapping[str, Any]]) -> TaskMessage:
    """The task ``spec`` describes, with the task type's and the hive's defaults filled in; else InvalidTask.

    ``remote`` maps task types spores advertised (this process may lack their code) to their declared
    options, which stand in for a local type's. A type known nowhere is :class:`UnknownTaskType` unless
    ``spec.allow_unknown`` (then the hive's defaults apply).
    """
    if not isinstance(spec.task_type, str) or not spec.task_type:
        raise InvalidTask(f"task_type must be a non-empty string, got {spec.task_type!r}")
    local = kernel.task_types.get(spec.task_type)
    options: Mapping[str, Any] = remote.get(spec.task_type, {})
    if local is None and spec.task_type not in remote:
        if not spec.allow_unknown:
            raise UnknownTaskType(spec.task_type, [*kernel.task_types, *remote], hint=True)
        if not TASK_NAME_RE.fullmatch(spec.task_type):
            raise InvalidTask(f"bad task type name {spec.task_type!r}: use letters, digits, '_', '.', ':' or '-'")
    task_type = _Options(**{k: options.get(k) for k in _Options.__annotations__}) if local is None else local
    payload = {} if spec.payload is None else spec.payload
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise InvalidTask(f"payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidTask(f"payload must be a JSON object (a dict), got {type(payload).__name__}")
    try:
        size = wire.json_size(payload)
    except WireError as exc:
        raise InvalidTask(f"payload is not JSON-serialisable: {exc}") from None
    check_depth(payload, "payload")
    chunk = None if spec.chunk is None else list(spec.chunk)
    if chunk is not None:
        if not chunk or not all(isinstance(p, dict) for p in chunk):
            raise InvalidTask("chunk must be a non-empty list of JSON objects")
        try:
            size += wire.json_size(chunk)
        except WireError as exc:
            raise InvalidTask(f"chunk is not JSON-serialisable: {exc}") from None
    if size > kernel.config.max_payload_bytes:
        raise InvalidTask(
            f"payload is {size} bytes, over the limit of {kernel.config.max_payload_bytes} "
            "(HIVE_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a reference"
        )
    default_priority = task_type.priority or "background"
    level = parse_priority(default_priority if spec.priority is None else spec.priority)
    timeout = spec.timeout if spec.timeout is not None else task_type.timeout
    timeout = float(timeout or kernel.config.task_timeout)
    if not timeout > 0:
        raise InvalidTask(f"timeout must be > 0 seconds, got {timeout!r}")
    retries = spec.max_retries if spec.max_retries is not None else task_type.max_retries
    retries = kernel.config.max_retries if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidTask(f"max_retries must be a whole number >= 0, got {retries!r}")
    requirements = dict(task_type.requirements or {})
    if spec.requirements is not None and not isinstance(spec.requirements, dict):
        raise InvalidTask(f"requirements must be a mapping, got {spec.requirements!r}")
    requirements.update(spec.requirements or {})
    wait_timeout = spec.wait_timeout if spec.wait_timeout is not None else task_type.wait_timeout
    if wait_timeout is not None and (isinstance(wait_timeout, bool) or not float(wait_timeout) > 0):
        raise InvalidTask(f"wait_timeout must be > 0 seconds, got {wait_timeout!r}")
    if spec.task_id is not None:
        check_task_id(spec.task_id)
    depends_on = list(spec.depends_on or [])
    if isinstance(spec.depends_on, str) or not all(isinstance(d, str) and d for d in depends_on):
        raise InvalidTask(f"depends_on must be a list of task ids, got {spec.depends_on!r}")
    headers = check_headers(spec.headers)
    eta = due_time(spec.delay, spec.eta)
    task_id = spec.task_id or uuid.uuid4().hex
    if task_id in depends_on:
        raise InvalidTask(f"task {task_id} cannot depend on itself")
    return TaskMessage(
        task_id=task_id, task_type=spec.task_type, payload=payload, priority=level, timeout=timeout,
        max_retries=retries, requirements=requirements, job_id=spec.job_id, depends_on=depends_on,
        chunk=chunk, engine_job_id=task_id, wait_timeout=None if wait_timeout is None else float(wait_timeout),
        headers=headers, eta=eta,
    )


#: Most bytes the headers of one task may take as JSON: they travel with every read of its record.
MAX_HEADER_BYTES = 8192


def check_headers(headers: object) -> dict[str, str]:
    """``headers`` as a fresh ``dict[str, str]`` if it is a small text-to-text mapping, else InvalidTask."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidTask(f"headers must be a mapping of text to text, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidTask(f"headers must map non-empty text to text, got {key!r}: {value!r}")
        checked[key] = value
    try:
        size = wire.json_size(checked)
    except WireError as exc:  # lone surrogates cannot be encoded
        raise InvalidTask(f"headers are not valid text: {exc}") from None
    if size > MAX_HEADER_BYTES:
        raise InvalidTask(f"headers take {size} bytes, over the limit of {MAX_HEADER_BYTES}")
    return checked


@attrs.frozen
class _Options:
    """A task type's options as a spore advertised them (no handler here)."""

    priority: int | str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    requirements: dict[str, Any] | None = None
    wait_timeout: float | None = None
