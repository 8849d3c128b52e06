"""Typed errors: each says what was wrong and what to do about it.

Each class carries the exit status the ``hive`` command ends with when it reaches the top (README, "Exit
codes"): scripts can tell a refused request (1) from Redis being down (69), Redis refusing the password
(77) and a setting, app module or plugin that cannot load (78).
"""

from __future__ import annotations

#: Exit statuses of the ``hive`` command (documented in README.md, "Exit codes").
EXIT_FAILED = 1  # the request was refused (bad input) or the work it asked for failed
EXIT_USAGE = 2  # click's usage error: an unknown option or a missing argument
EXIT_UNAVAILABLE = 69  # no Redis answers (sysexits EX_UNAVAILABLE)
EXIT_NOPERM = 77  # Redis answered but refused the credentials (EX_NOPERM)
EXIT_CONFIG = 78  # a setting, an --app module or a plugin cannot be loaded (EX_CONFIG)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class HiveError(Exception):
    """Base class of every error hive-framework raises on purpose."""

    exit_code = EXIT_FAILED


class ConfigError(HiveError):
    """A setting is unknown or has a bad value; the message names the key."""

    exit_code = EXIT_CONFIG


class PluginError(HiveError):
    """A plugin could not be loaded or implements a hook that does not exist; ``plugin`` names it when known."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class UnknownTaskType(HiveError):
    """A task type nobody provides; the message lists the known ones."""

    def __init__(self, task_type: str, known: list[str], *, hint: bool = False) -> None:
        self.task_type = task_type
        self.known = sorted(set(known))
        listed = ", ".join(self.known) or "none (load an --app module or install a plugin)"
        extra = (
            "; no spore has ever advertised it: check the name, or pass --allow-unknown (allow_unknown=True) "
            "to queue it for a spore yet to come"
        ) if hint else ""
        super().__init__(f"unknown task type {task_type!r}; known task types: {listed}{extra}")


def no_such_task(task_id: str) -> str:
    """What every reader (``hive task``, ``Hive.progress``, the Monitor's API) says of a task id with no record."""
    return f"no task with id {task_id!r} (unknown, expired after HIVE_RESULT_TTL, or forgotten)"


class InvalidTask(HiveError):
    """A task was refused before anything was enqueued (bad payload, priority, size)."""


class WireError(HiveError):
    """Data read from Redis or a client could not be decoded into a model."""


class BrokerNotConnected(HiveError):
    """The broker was used before ``connect()``."""


class RedisUnavailable(HiveError):
    """No Redis answers at the configured address."""

    exit_code = EXIT_UNAVAILABLE


class RedisAuthFailed(RedisUnavailable):
    """Redis answered but refused the password or user name (AUTH)."""

    exit_code = EXIT_NOPERM


class TaskFailed(HiveError):
    """Raised by ``Hive.result`` when the awaited task ended failed or cancelled."""

    def __init__(self, task_id: str, status: str, error: str | None) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error
        super().__init__(f"task {task_id} {status}: {error}")


class WaitTimeout(HiveError):
    """Waiting for a task's result took longer than allowed; the task itself goes on."""


class FatalCondition(HiveError):
    """A spore or nexus stopped on a named condition that waiting will not heal (auth refused too long...)."""
