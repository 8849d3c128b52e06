"""Typed errors: each says what was wrong and what to do about it."""

from __future__ import annotations


class HiveError(Exception):
    """Base class of every error hive-framework raises on purpose."""


class ConfigError(HiveError):
    """A setting is unknown or has a bad value; the message names the key."""


class PluginError(HiveError):
    """A plugin could not be loaded or implements a hook that does not exist."""


class UnknownTaskType(HiveError):
    """A task type nobody provides; the message lists the known ones."""

    def __init__(self, task_type: str, known: list[str]) -> None:
        self.task_type = task_type
        self.known = sorted(set(known))
        listed = ", ".join(self.known) or "none (load an --app module or install a plugin)"
        super().__init__(f"unknown task type {task_type!r}; known task types: {listed}")


class InvalidTask(HiveError):
    """A task was refused before anything was enqueued (bad payload, priority, size)."""


class WireError(HiveError):
    """Data read from Redis or a client could not be decoded into a model."""


class BrokerNotConnected(HiveError):
    """The broker was used before ``connect()``."""


class RedisUnavailable(HiveError):
    """No Redis answers at the configured address."""


class TaskTimeout(HiveError):
    """A task ran longer than its timeout."""


class TaskFailed(HiveError):
    """Raised by ``Hive.result`` when the awaited task ended failed or cancelled."""

    def __init__(self, task_id: str, status: str, error: str | None) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error
        super().__init__(f"task {task_id} {status}: {error}")


class WaitTimeout(HiveError):
    """Waiting for a task's result took longer than allowed; the task itself goes on."""
