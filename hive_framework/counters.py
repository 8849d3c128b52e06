"""The hive's task counters: what each final task, and each retry, adds to one cluster-wide Redis hash.

Spores count in memory through the ``counters`` default plugin's life-cycle hooks and add their deltas to
``Keys.counters`` about once a second (:class:`Tally`); a final status set anywhere else (a cancel, the
watchdog failing a zombie or a task that waited too long, a dependency failing) is counted by the broker in
the transaction that writes it. The Monitor renders the hash at scrape time, so every nexus reports the same
figures and a restart loses none.

Fields (task types last, so a type name can never be taken for another part):
``finished <status>``, ``retries <task_type>``, ``bucket <status> <le> <task_type>`` (tasks whose last attempt
took at most ``le`` seconds and more than the bound below: not cumulative) and ``sum_us <status> <task_type>``
(microseconds, so that every field is an integer ``HINCRBY`` adds to).
"""

from __future__ import annotations

import bisect
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from .models import TaskMessage, TaskStatus

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
#: Final statuses the counters follow.
FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
_FINAL_VALUES = frozenset(s.value for s in FINAL)
#: How a bucket's bound is written in its field (``repr``: ``0.01`` ... ``1800``, ``inf``).
_BOUND_TEXT = tuple("inf" if math.isinf(b) else repr(float(b)) for b in DURATION_BUCKETS)
_BOUND_INDEX = {t: i for i, t in enumerate(_BOUND_TEXT)}
#: How long a process's last-flushed token is kept (ms): a flush whose reply was lost is recognised when it
#: is sent again within this time, so it is never added twice.
FLUSH_MARK_TTL_MS = 86_400_000

# Adds the field, delta pairs of ARGV from index FIRST to the hash KEYS[1], all or nothing: a script is not
# rolled back, so a HINCRBY refused half way would add the first part of a batch again on every retry. A key of
# another type is renamed to KEYS[2] (kept for a look, and counting starts afresh); a field HINCRBY refuses (not
# an integer, or one that would overflow) is replaced by its delta. Returns {1, the set-aside key's type or '',
# the replaced fields...}.
_ADD = """
local kind = redis.call('TYPE', KEYS[1]).ok
local out = {1, ''}
if kind ~= 'hash' and kind ~= 'none' then
    redis.call('RENAME', KEYS[1], KEYS[2])
    out[2] = kind
end
for i = FIRST, #ARGV, 2 do
    local reply = redis.pcall('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
    if type(reply) == 'table' and reply.err then
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
        out[#out + 1] = ARGV[i]
    end
end
"""

#: KEYS[1] the counters hash, KEYS[2] where a key of another type is set aside; ARGV field, delta pairs.
ADD_COUNTERS = _ADD.replace("FIRST", "1") + "return out\n"

# KEYS as ADD_COUNTERS, KEYS[3] this process's last applied batch; ARGV[1] the batch's token, ARGV[2] the mark's
# TTL (ms), then field, delta pairs. A batch sent again after a lost reply is applied once ({0} then).
_FLUSH = (
    "if redis.call('GET', KEYS[3]) == ARGV[1] then return {0} end\n"
    + _ADD.replace("FIRST", "3")
    + "redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])\nreturn out\n"
)


def aside_key(hash_key: str) -> str:
    """A fresh name to set an unreadable counters key aside under (never one an earlier one took)."""
    return f"{hash_key}:unreadable:{uuid.uuid4().hex}"


def report_repairs(reply: Any, hash_key: str, aside: str) -> None:
    """Log what an add had to repair (see ``_ADD``), naming the keys and the fields."""
    if not isinstance(reply, list) or len(reply) < 2:
        return
    kind, fields = reply[1], reply[2:]
    text = kind.decode() if isinstance(kind, bytes) else str(kind)
    if text:
        logger.warning("counters: %s held a %s, not a hash; it was set aside as %s and the counts start afresh",
                       hash_key, text, aside)
    if fields:
        names = [f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in fields]
        logger.warning("counters: %d field(s) of %s held no integer HINCRBY can add to and were reset to this "
                       "batch's counts: %s", len(names), hash_key, ", ".join(sorted(names)))


def finished_field(status: str) -> str:
    return f"finished {status}"


def retries_field(task_type: str) -> str:
    return f"retries {task_type}"


def final_deltas(task: TaskMessage) -> list[tuple[str, int]]:
    """What ``task``, which just became final, adds: one finish, and for one that ran and was not cancelled its
    last attempt's run time (a bucket and the sum)."""
    status = task.status.value
    out = [(finished_field(status), 1)]
    if task.started_at is not None and task.completed_at is not None and task.status != TaskStatus.CANCELLED:
        seconds = max((task.completed_at - task.started_at).total_seconds(), 0.0)
        le = _BOUND_TEXT[bisect.bisect_left(DURATION_BUCKETS, seconds)]
        out.append((f"bucket {status} {le} {task.task_type}", 1))
        out.append((f"sum_us {status} {task.task_type}", round(seconds * 1e6)))
    return out


class Tally:
    """One process's counts not yet in Redis. Counting is a dict update (the hooks' hot path); :meth:`flush`
    writes them in one script call. A flush that fails keeps its batch, and the next one sends that very batch
    again under the same token before any newer counts: nothing is lost, nothing is added twice."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        #: The batch sent but not known to be applied (flat field, delta list) and its token.
        self._batch: list[Any] | None = None
        self._token = ""
        #: Names this process's last-applied mark (one key per process, expiring a day after its last flush).
        self.process_id = uuid.uuid4().hex
        self._script: tuple[Any, Any] | None = None

    def add(self, field: str, amount: int = 1) -> None:
        self.pending[field] = self.pending.get(field, 0) + amount

    def count_final(self, task: TaskMessage) -> None:
        for field, amount in final_deltas(task):
            self.add(field, amount)

    @property
    def unwritten(self) -> int:
        """Fields with counts not yet known to be in Redis."""
        return len(self.pending) + (len(self._batch) // 2 if self._batch else 0)

    async def flush(self, redis: Any, hash_key: str, mark_key_prefix: str) -> int:
        """Add the counts to ``hash_key`` (first the batch a failed flush left, if any); returns the fields sent,
        0 when there was nothing to send (then Redis is not called)."""
        if self._batch is None:
            if not self.pending:
                return 0
            self._batch = [part for item in self.pending.items() for part in item]
            self.pending = {}
            self._token = uuid.uuid4().hex
        if self._script is None or self._script[0] is not redis:
            self._script = (redis, redis.register_script(_FLUSH))
        batch = self._batch
        aside = aside_key(hash_key)
        reply = await self._script[1](keys=[hash_key, aside, f"{mark_key_prefix}:{self.process_id}"],
                                      args=[self._token, FLUSH_MARK_TTL_MS, *batch])
        report_repairs(reply, hash_key, aside)
        self._batch = None
        return len(batch) // 2


@attrs.define
class Counters:
    """The counters hash, read: finishes by status, retries by task type, the histogram by (task type, status)."""

    finished: dict[str, int] = attrs.Factory(dict)
    retries: dict[str, int] = attrs.Factory(dict)
    #: (task_type, status) -> a count per bucket of DURATION_BUCKETS (not cumulative).
    buckets: dict[tuple[str, str], list[int]] = attrs.Factory(dict)
    #: (task_type, status) -> total run time in microseconds.
    sums_us: dict[tuple[str, str], int] = attrs.Factory(dict)


def _count(value: str) -> int | None:
    """A field's value as a count, or ``None``: HINCRBY writes decimal integers, never negative ones here."""
    if not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _parts(field: str) -> tuple[str, list[str]] | None:
    """A field's kind and its parts, or ``None`` for a field the hive does not write."""
    kind, _, rest = field.partition(" ")
    arity = {"finished": 1, "retries": 1, "bucket": 3, "sum_us": 2}.get(kind)
    if arity is None:
        return None
    parts = rest.split(" ", arity - 1)
    if len(parts) != arity or not all(parts):
        return None
    if kind in ("bucket", "sum_us", "finished") and parts[0] not in _FINAL_VALUES:
        return None
    if kind == "bucket" and parts[1] not in _BOUND_INDEX:
        return None
    return kind, parts


def parse_counters(raw: Mapping[str, str]) -> tuple[Counters, list[str]]:
    """The counters in the hash ``raw`` (as text), and the fields skipped as unreadable (planted, or written by
    another version: an unknown name, status or bound, or a value that is not a count)."""
    out = Counters()
    skipped: list[str] = []
    for field, value in raw.items():
        amount = _count(value)
        parsed = _parts(field)
        if amount is None or parsed is None:
            skipped.append(field)
            continue
        kind, parts = parsed
        if kind == "finished":
            out.finished[parts[0]] = amount
        elif kind == "retries":
            out.retries[parts[0]] = amount
        elif kind == "bucket":
            status, le, task_type = parts
            out.buckets.setdefault((task_type, status), [0] * len(DURATION_BUCKETS))[_BOUND_INDEX[le]] = amount
        else:
            status, task_type = parts
            out.sums_us[(task_type, status)] = amount
    return out, skipped
