"""How many tasks finished, and when, without one Redis entry per finished task.

A final task's record is kept for ``HIVE_RESULT_TTL``; an index entry per finished task beside it cost more
than a third of that record again. So the final status indexes keep only the newest :data:`RECENT_KEPT` ids
(what the Monitor lists), and the counts are bucketed counters, each key living as long as its bucket is in
its window:

* ``{prefix}:finished:<status>:10:<start>``: tasks per 10 s, kept :data:`THROUGHPUT_KEEP_S` (the Monitor's
  throughput series);
* ``{prefix}:finished:<status>:<width>:<start>``: tasks per ``width`` = about 1/120 of the result TTL, kept
  that TTL (``get_queue_stats``: ``tasks_completed`` ... are the tasks that finished within the TTL, to within
  one bucket, whether or not their records are still there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..models import TaskStatus
from ..redisutil import awaited

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..keys import Keys
    from .records import Command

#: Final-status index entries kept per status (the newest): the Monitor lists at most 500.
RECENT_KEPT = 1000
#: Width of the throughput buckets, seconds (the Monitor's series has one point per bucket).
THROUGHPUT_BUCKET_S = 10
#: How long a throughput bucket is kept after it ends, seconds (the Monitor shows the last 10 minutes).
THROUGHPUT_KEEP_S = 3600
#: Buckets the result TTL is cut into for the counts (so a count is exact to within 1/120 of the TTL).
COUNT_BUCKETS = 120
#: The final statuses, each counted.
FINAL = tuple(status for status in TaskStatus if status.is_terminal)
#: A pseudo-command of :func:`count_commands` (``commands.lua``): ``HIVE.COUNT key ttl-ms`` adds one to the
#: counter, whose expiry is set when its count starts; a key that holds no counter (planted, or of another
#: type) is counted afresh instead of failing the final save it is part of.
COUNT = "HIVE.COUNT"


def count_width(result_ttl: float) -> int:
    """Seconds per counting bucket for a result TTL: whole seconds, at least 10."""
    return max(THROUGHPUT_BUCKET_S, math.ceil(result_ttl / COUNT_BUCKETS))


def count_commands(keys: Keys, result_ttl: float, status: TaskStatus, now: float) -> list[Command]:
    """Commands that count one task reaching the final ``status`` at ``now`` (for :mod:`.records`)."""
    out: list[Command] = []
    keeps = {THROUGHPUT_BUCKET_S: float(THROUGHPUT_KEEP_S)}
    width = count_width(result_ttl)
    keeps[width] = max(keeps.get(width, 0.0), result_ttl)  # one key serves both when the widths agree
    for width, keep in keeps.items():
        start = int(now // width) * width
        key = keys.finished(status.value, width, start)
        # the key outlives its bucket by the window, so a count over the window never misses a bucket in it
        out.append((COUNT, key, max(int((start + width + keep - now) * 1000), 1)))
    return out


def _count(value: Any) -> int:
    """A counter as read (``None``: no key); what is no count (planted) reads as 0."""
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _starts(width: int, since: float, until: float) -> list[int]:
    """Start times of the ``width`` buckets that overlap [since, until]."""
    first = int(since // width) * width
    return list(range(first, int(until // width) * width + 1, width))


async def finished_counts(redis: Redis, keys: Keys, result_ttl: float, now: float | None = None,
                          statuses: Sequence[TaskStatus] = FINAL) -> dict[TaskStatus, int]:
    """Tasks that reached each final status within the result TTL (to within one bucket), one MGET."""
    now = time.time() if now is None else now
    width = count_width(result_ttl)
    starts = _starts(width, now - result_ttl, now)
    names = [keys.finished(s.value, width, start) for s in statuses for start in starts]
    values = await awaited(redis.mget(names))
    out: dict[TaskStatus, int] = {}
    for i, status in enumerate(statuses):
        out[status] = sum(_count(v) for v in values[i * len(starts) : (i + 1) * len(starts)])
    return out


async def throughput(redis: Redis, keys: Keys, statuses: Sequence[TaskStatus], starts: Sequence[int]
                     ) -> dict[TaskStatus, list[int]]:
    """Per final status, the tasks that reached it in each 10-second bucket starting at ``starts``."""
    names = [keys.finished(s.value, THROUGHPUT_BUCKET_S, start) for s in statuses for start in starts]
    values = await awaited(redis.mget(names)) if names else []
    return {
        status: [_count(v) for v in values[i * len(starts) : (i + 1) * len(starts)]]
        for i, status in enumerate(statuses)
    }
