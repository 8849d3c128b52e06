"""Keeping Redis bounded without any reader: what the nexus watchdog trims on each sweep.

Writers already trim the final status indexes and the dead letters as they add to them
(:func:`~hive_framework.broker.records.status_commands`); a sweep also does it for hives where nothing was
written for a while, drops quarantined records (:mod:`.poison`) and map-reduce job ids past
``HIVE_RESULT_TTL``, and forgets nodes that have been offline that long (an unnamed spore that restarted
under a new id leaves its old one behind until then).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import wire
from ..errors import WireError
from ..models import NodeInfo, TaskStatus
from ..redisutil import execute_or_empty, read_or_empty

if TYPE_CHECKING:
    from .base import MessageBroker


async def trim(broker: MessageBroker, *, now: float | None = None) -> dict[str, int]:
    """One trimming pass; counts of what was removed, by kind."""
    now = time.time() if now is None else now
    keys, redis = broker.keys, broker.redis
    cutoff = now - broker.config.result_ttl
    async with redis.pipeline(transaction=False) as pipe:
        for status in TaskStatus:
            if status.is_terminal:
                pipe.zremrangebyscore(keys.status_index(status), "-inf", cutoff)
        pipe.zremrangebyscore(keys.dead_letters, "-inf", cutoff)
        pipe.zremrangebyscore(keys.jobs, "-inf", cutoff)
        pipe.zrangebyscore(keys.dead_records_index, "-inf", cutoff)
        *indexes, dead, jobs, old_records = await execute_or_empty(pipe, 0)
    old_records = old_records or []
    counts = {"index_entries": sum(indexes), "dead_letters": dead, "jobs": jobs, "dead_records": len(old_records),
              "nodes": 0}
    if old_records:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.dead_records, *old_records)
            pipe.zrem(keys.dead_records_index, *old_records)
            await execute_or_empty(pipe, 0)
    online = {n.node_id for n in await broker.get_nodes()}
    infos = await read_or_empty(redis.hgetall(keys.node_infos), {}, keys.node_infos)
    forget = []
    for node_id, raw in infos.items():
        try:
            info = wire.loads(raw, NodeInfo)
        except WireError:
            continue  # quarantined by the next cluster read
        if info.node_id not in online and info.last_heartbeat.timestamp() < cutoff:
            forget.append(node_id)
    if forget:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.node_infos, *forget)
            pipe.srem(keys.nodes, *forget)
            await execute_or_empty(pipe, 0)
    counts["nodes"] = len(forget)
    return counts
