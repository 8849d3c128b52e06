"""Sync task types run in child processes (isolation="process"), for tests/test_isolation.py."""

from __future__ import annotations

import os
import time
from typing import Any

from hive_framework import task


@task("spin", isolation="process", timeout=1, max_retries=0)
def spin(payload: dict[str, Any]) -> None:
    """Burn CPU forever, never yielding: only killing its process stops it."""
    while True:
        pass


@task("whoami", isolation="process")
def whoami(payload: dict[str, Any]) -> dict[str, Any]:
    """The pid that ran it, and the payload back."""
    return {"pid": os.getpid(), "payload": payload}


@task("boom", isolation="process", max_retries=0)
def boom(payload: dict[str, Any]) -> None:
    raise ValueError(f"bad input {payload.get('n')}")


@task("vanish", isolation="process", max_retries=0)
def vanish(payload: dict[str, Any]) -> None:
    """The process dies under the handler (as a crash in a C extension would)."""
    os._exit(3)


@task("slow_sync", isolation="process", timeout=30)
def slow_sync(payload: dict[str, Any]) -> float:
    time.sleep(float(payload["seconds"]))
    return float(payload["seconds"])
