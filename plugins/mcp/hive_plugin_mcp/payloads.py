"""Payload schemas: a task type may declare one (``@task(..., schema=...)``); payloads are checked before enqueueing."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pydantic
from hive_framework import HiveError, Kernel
from jsonschema import exceptions as schema_errors
from jsonschema import validators

#: At most this many schema errors are listed in one refusal.
MAX_LISTED_ERRORS = 10


class PayloadRejected(HiveError):
    """A payload (or a map-reduce item) that breaks its task type's schema; nothing was enqueued."""

    def __init__(self, task_type: str, problems: Sequence[str]) -> None:
        self.task_type = task_type
        self.problems = list(problems)
        listed = "; ".join(self.problems[:MAX_LISTED_ERRORS])
        more = len(self.problems) - MAX_LISTED_ERRORS
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(
            f"payload refused by the schema of task type {task_type!r}, nothing enqueued: {listed}{suffix}"
        )


def json_schema_of(payload_class: type) -> dict[str, Any]:
    """The JSON Schema of an attrs class's fields, for ``@task(..., schema=json_schema_of(Payload))``.

    Field types and defaults are described (through pydantic, from the resolved annotations); attrs
    validators are code and are not: keep the limits that matter to callers in the types, or write the
    schema by hand. Extra keys are refused (``additionalProperties: false``), as attrs would refuse them.
    """
    if not attrs.has(payload_class):
        raise TypeError(f"{payload_class!r} is not an attrs class")
    hints = attrs.resolve_types(payload_class)
    fields: dict[str, Any] = {}
    for field in attrs.fields(hints):
        annotation = field.type if field.type is not None else Any
        if field.default is attrs.NOTHING:
            fields[field.alias or field.name] = (annotation, ...)
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            fields[field.alias or field.name] = (annotation, pydantic.Field(default_factory=field.default.factory))
        else:
            fields[field.alias or field.name] = (annotation, field.default)
    model = pydantic.create_model(
        payload_class.__name__, __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )
    schema: dict[str, Any] = model.model_json_schema()
    if payload_class.__doc__:
        schema["description"] = inspect.cleandoc(payload_class.__doc__).split("\n")[0]
    return schema


def schema_of(kernel: Kernel, task_type: str) -> dict[str, Any] | None:
    """The payload schema ``task_type`` declares here, or ``None`` (no schema, or a type only remote spores know)."""
    declared = kernel.task_types.get(task_type)
    return None if declared is None else declared.schema


def _where(path: Iterable[Any]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def problems(schema: dict[str, Any], payload: Any) -> list[str]:
    """What is wrong with ``payload`` under ``schema`` (empty when it conforms), each as ``$.path: message``.

    A schema that is itself invalid is reported as one problem rather than raised: the agent learns the
    task type cannot be called this way, and the hive's operator finds the cause in the message.
    """
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except schema_errors.SchemaError as exc:
        return [f"the task type's own schema is invalid: {exc.message}"]
    validator = cls(schema)
    errors = sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(e.absolute_path)}: {e.message}" for e in errors]


def check_payloads(kernel: Kernel, task_type: str, payloads: Sequence[Any], *, label: str = "payload") -> None:
    """Raise :class:`PayloadRejected` naming every bad payload; a type without a schema accepts anything.

    With several payloads (map-reduce items) each problem names the item's index: ``items[3] $.n: ...``.
    """
    schema = schema_of(kernel, task_type)
    if schema is None:
        return
    found: list[str] = []
    for index, payload in enumerate(payloads):
        prefix = f"{label}[{index}] " if len(payloads) > 1 or label != "payload" else ""
        found.extend(prefix + problem for problem in problems(schema, payload))
        if len(found) > MAX_LISTED_ERRORS * 10:  # enough to show; stop checking a huge bad batch
            break
    if found:
        raise PayloadRejected(task_type, found)
