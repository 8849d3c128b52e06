"""The status writes of a task record, as plain Redis commands.

One function builds them; the broker runs them in a pipeline and an engine may embed the very same
commands in a Lua call (the streams engine saves, settles and schedules a retry in one guarded script),
so the two paths can never drift apart.
"""

from __future__ import annotations

import hashlib
import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from .. import wire
from ..models import TaskMessage, TaskStatus
from .finished import RECENT_KEPT, count_commands

if TYPE_CHECKING:
    from ..config import HiveConfig
    from ..keys import Keys
    from .engine import Previous

#: The most dead letters kept (the oldest go first); they are also dropped when their record expires
#: (``HIVE_RESULT_TTL``).
MAX_DEAD_LETTERS = 100_000

#: How long a finished task's ``done`` list lives, at most (ms). It only wakes waiters blocked at the moment the
#: task finished: a waiter reads the record before it blocks and again at least every 5 s, so the list only
#: has to outlive the round trip between a waiter's read and its blocking call (missing it costs that waiter
#: at most 5 s, never the outcome). Kept longer, it was a fifth of a finished task's memory.
DONE_MARKER_TTL_MS = 10_000

#: How long a waiter's marker lives (ms): longer than one pass of its loop (a blocking wait of at most 5 s).
WAITER_MARK_TTL_MS = 15_000
#: A pseudo-command of :func:`status_commands` (``commands.lua``): ``HIVE.WAKE waiters-key done-key status
#: ttl-ms`` pushes ``status`` onto the done list only when the waiters' marker exists.
WAKE = "HIVE.WAKE"

#: ``run_commands(argv, first, reads_only)``, the Lua function that runs status commands and their
#: pseudo-commands (``commands.lua`` documents it): one copy for the broker's pipelines and the streams
#: engine's guarded save, which both send it before their own code.
COMMANDS_LUA = "\n".join(
    line for line in files(__package__).joinpath("commands.lua").read_text(encoding="utf-8").splitlines()
    if not line.startswith("--")  # sent whole by pipelines: only the code
)
_RUN_SCRIPT = f"{COMMANDS_LUA}\nreturn run_commands(ARGV, 1, false)\n"
#: The SHA-1 a call by SHA names (:func:`add_to_pipeline` with ``by_sha``).
_RUN_SHA = hashlib.sha1(_RUN_SCRIPT.encode()).hexdigest()

#: One Redis command: its name, then its arguments.
Command = tuple[Any, ...]

#: Fields of a task record that only a live task needs: a finished record is written without them.
LIVE_ONLY_FIELDS = ("queue", "engine_job_id")
#: Left out of a finished record too: its key says it, and every reader reads by it (:func:`decode`).
KEY_FIELDS = ("task_id",)



def status_commands(
    keys: Keys, config: HiveConfig, message: TaskMessage, previous: Previous = "unknown"
) -> list[Command]:
    """Commands that store ``message`` and move it between status indexes.

    ``previous`` is the status it had, when the caller knows it (``None`` for a new task): then only that
    index is touched, instead of every other one. A final task's record expires after ``HIVE_RESULT_TTL``,
    its waiters are woken (``done`` list) and its map-reduce job hears of it (job events stream).
    """
    now = repr(time.time())
    if message.is_terminal:
        # Kept for HIVE_RESULT_TTL and read only through the model, so compact: no default fields, times as
        # integers, no id (its key has it), and none of the engine's bookkeeping (its stream and job), which only
        # a live task needs (a retry by hand places the task afresh). A live record keeps every field: the Lua
        # fence and the backlog read them raw.
        data = wire.dumps(message, omit_defaults=True, leave_out=(*LIVE_ONLY_FIELDS, *KEY_FIELDS))
    else:
        data = wire.dumps(message)
    task_id = message.task_id
    out: list[Command] = []
    if message.is_terminal:
        ttl = int(config.result_ttl * 1000)
        out.append(("PSETEX", keys.task(task_id), ttl, data))
        out.append((WAKE, keys.waiters(task_id), keys.done(task_id), message.status.value,
                    min(ttl, DONE_MARKER_TTL_MS)))
        if message.job_id:
            events = keys.job_events(message.job_id)
            out.append(("XADD", events, "*", "task_id", task_id, "status", message.status.value))
            out.append(("PEXPIRE", events, ttl))
    else:
        out.append(("SET", keys.task(task_id), data))
    if previous == "unknown":
        for status in TaskStatus:
            if status != message.status:
                out.append(("ZREM", keys.status_index(status), task_id))
    elif previous is not None and previous != message.status:
        out.append(("ZREM", keys.status_index(previous), task_id))
    # A scheduled task's index is scored by when it is due (the backlog counts the due ones still waiting).
    score = repr(message.eta.timestamp()) if message.status == TaskStatus.SCHEDULED and message.eta else now
    out.append(("ZADD", keys.status_index(message.status), score, task_id))
    if message.is_terminal:
        # Bounded without any reader: a final index keeps the newest ids whose record has not expired (the
        # Monitor's list); the counts are bucketed counters.
        index = keys.status_index(message.status)
        out.append(("ZREMRANGEBYSCORE", index, "-inf", repr(time.time() - config.result_ttl)))
        out.append(("ZREMRANGEBYRANK", index, 0, -RECENT_KEPT - 1))
        out += count_commands(keys, config.result_ttl, message.status, float(now))
    if message.status == TaskStatus.FAILED:
        out.append(("ZADD", keys.dead_letters, now, task_id))
        out.append(("ZREMRANGEBYSCORE", keys.dead_letters, "-inf", repr(time.time() - config.result_ttl)))
        out.append(("ZREMRANGEBYRANK", keys.dead_letters, 0, -MAX_DEAD_LETTERS - 1))
    elif previous in ("unknown", TaskStatus.FAILED):
        out.append(("ZREM", keys.dead_letters, task_id))
    return out


def add_to_pipeline(pipe: Any, commands: list[Command], *, by_sha: bool = False) -> None:
    """Queue ``commands`` on a redis-py pipeline as one script call (one reply: the last command's).

    Its one key, the first command's, only routes the call on a Redis Cluster (every key of a hive shares
    a slot). ``by_sha`` sends the script's SHA-1 instead of its 1.6 KB source (EVALSHA): for a caller that,
    on ``NoScriptError``, calls :func:`load_runner` and sends the pipeline again, which is safe only when the
    pipeline writes nothing else (every call of a missing script fails alike, so none of them wrote)."""
    if commands:
        if by_sha:
            pipe.evalsha(_RUN_SHA, 1, commands[0][1], *flatten(commands))
        else:
            pipe.eval(_RUN_SCRIPT, 1, commands[0][1], *flatten(commands))


async def load_runner(redis: Any) -> None:
    """Load the status runner into Redis's script cache (lost on a restart or a failover)."""
    await redis.script_load(_RUN_SCRIPT)


def flatten(commands: list[Command]) -> list[Any]:
    """``commands`` as ``run_commands`` reads them: each one's argument count, then the command."""
    return [part for command in commands for part in (len(command), *command)]
