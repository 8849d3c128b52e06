"""ARQ job data as JSON, never pickle: ARQ's serializer hooks for the ``arq`` engine."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def job_serializer(data: dict[str, Any]) -> bytes:
    """ARQ job/result serializer: JSON, with exceptions turned into data (never pickle)."""
    return json.dumps(data, default=_encode_extra, separators=(",", ":")).encode()


def job_deserializer(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("an ARQ job must be a JSON object")
    return value


def _encode_extra(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"error_type": type(value).__name__, "message": str(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON data")
