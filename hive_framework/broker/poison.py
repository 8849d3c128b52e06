"""Poison isolation: a record that cannot be decoded is quarantined once, with its raw bytes, and never again
stops a loop, a sweep or an API call.

Every place that decodes what Redis holds (task records, heartbeats, broadcasts, replies) calls
:func:`quarantine` on a :class:`~hive_framework.errors.WireError` instead of letting it propagate: the raw
bytes (at most :data:`RAW_CAP` of them, base64) and the reason go to the ``{prefix}:dead:records`` hash,
once per record (``HSETNX``), and the caller's clean-up commands (delete the key, drop the id from the
indexes...) run in the same transaction, so the record is acknowledged and does not come back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..redisutil import read_or_empty, text
from .records import add_to_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..keys import Keys

logger = logging.getLogger(__name__)

#: How many raw bytes of a poison record are kept.
RAW_CAP = 4096
#: How many quarantined records are kept at most (oldest dropped first); see also their retention.
MAX_DEAD_RECORDS = 10_000


def _bytes(raw: Any) -> bytes:
    if raw is None:
        return b""
    if isinstance(raw, bytes):
        return raw
    return str(raw).encode("utf-8", "surrogateescape")


def digest(raw: Any) -> str:
    """A short fingerprint of ``raw``: names a quarantined message that has no key of its own (a broadcast)."""
    return hashlib.sha1(_bytes(raw), usedforsecurity=False).hexdigest()[:16]


def entry(name: str, raw: Any, reason: str) -> str:
    """The JSON kept for one quarantined record."""
    data = _bytes(raw)
    return json.dumps({
        "record": name,
        "reason": reason[:500],
        "size": len(data),
        "raw_base64": base64.b64encode(data[:RAW_CAP]).decode(),
        "truncated": len(data) > RAW_CAP,
        "at": time.time(),
    })


async def quarantine(
    redis: Redis, keys: Keys, name: str, raw: Any, reason: str, cleanup: Sequence[tuple[Any, ...]] = ()
) -> bool:
    """Keep ``raw`` under ``name`` (``"<key>"`` or ``"<key> <part>"``) in the dead records, once, and run
    ``cleanup`` with it in one transaction. ``True`` when it was new (logged then, once)."""
    now = time.time()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hsetnx(keys.dead_records, name, entry(name, raw, reason))
        pipe.zadd(keys.dead_records_index, {name: now}, nx=True)
        add_to_pipeline(pipe, list(cleanup))  # a key of another type among them is replaced, not an error
        # Bounded: the oldest quarantined records go first past the cap.
        pipe.zrange(keys.dead_records_index, 0, -MAX_DEAD_RECORDS - 1)
        replies = await pipe.execute()
    overflow = replies[-1]
    if overflow:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.dead_records, *overflow)
            pipe.zrem(keys.dead_records_index, *overflow)
            await pipe.execute()
    new = bool(replies[0])
    if new:
        logger.warning("quarantined an undecodable record %s (%s); kept in %s", name, reason, keys.dead_records)
    return new


def _unreadable(name: Any, raw: Any, at: float, why: str) -> dict[str, Any]:
    """A row standing in for a dead-records entry that is not one :func:`entry` wrote (something else wrote
    into the hash): shown as unreadable, with its raw bytes, rather than dropped or crashing the reader."""
    data = _bytes(raw)
    return {
        "record": text(name),
        "reason": f"unreadable dead-records entry: {why}",
        "size": len(data),
        "raw_base64": base64.b64encode(data[:RAW_CAP]).decode(),
        "truncated": len(data) > RAW_CAP,
        "at": at,
        "unreadable": True,
    }


def _row(name: Any, raw: Any, at: float) -> dict[str, Any]:
    """One dead-records entry as a row with the fields every reader uses (record, reason, size, at), whatever
    the hash holds: the entry itself is poison-proof like every other read of Redis."""
    try:
        row = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        return _unreadable(name, raw, at, f"not valid JSON ({type(exc).__name__})")
    if not isinstance(row, dict):
        return _unreadable(name, raw, at, f"a JSON {type(row).__name__}, not an object")
    if not isinstance(row.get("at"), int | float) or isinstance(row.get("at"), bool):
        row["at"] = at  # the index's score: when it was quarantined
    if not isinstance(row.get("record"), str):
        row["record"] = text(name)
    if not isinstance(row.get("size"), int) or isinstance(row.get("size"), bool):
        row["size"] = 0
    if not isinstance(row.get("reason"), str):
        row["reason"] = ""
    return row


async def dead_records(redis: Redis, keys: Keys, limit: int = 100) -> list[dict[str, Any]]:
    """The quarantined records, newest first. An entry that is not one this module wrote (not JSON, not a JSON
    object: written straight into Redis) comes back as a row marked ``"unreadable": True``, never an error."""
    index = keys.dead_records_index
    scored = await read_or_empty(redis.zrevrange(index, 0, limit - 1, withscores=True), [], index)
    if not scored:
        return []
    names = [name for name, _ in scored]
    raws = await read_or_empty(redis.hmget(keys.dead_records, names), [None] * len(names), keys.dead_records)
    return [_row(name, raw, float(at)) for (name, at), raw in zip(scored, raws, strict=True) if raw is not None]
