"""The arq engine's batch take: up to N due jobs marked in progress, in order, in one script call."""

from __future__ import annotations

import time

import pytest

from hive_framework import Hive
from hive_framework.engines.arq.worker import _TAKE


@pytest.mark.redis
async def test_a_batch_take_marks_at_most_n_due_free_jobs_in_order(hive: Hive) -> None:
    # Given a queue of six jobs: two due and free, one held by another spore, one not due yet, two more due
    redis, prefix = hive.broker.redis, hive.broker.keys.prefix
    queue = f"{prefix}:take-test:queue"
    now = int(time.time() * 1000)
    scores = {"a": now - 6, "b": now - 5, "held": now - 4, "later": now + 60_000, "c": now - 2, "d": now - 1}
    await redis.zadd(queue, scores)
    in_progress = {job: f"{prefix}:take-test:in-progress:{job}" for job in scores}
    await redis.set(in_progress["held"], "1", px=60_000)
    take = redis.register_script(_TAKE)
    order = ["a", "b", "held", "later", "c", "d"]
    keys = [key for job in order for key in (queue, in_progress[job])]

    # When a spore with three free slots takes from the list it read
    replies = await take(keys=keys, args=[now, 5_000, 3, *order])

    # Then the first three due, free jobs are taken, with their scores, and nothing after them
    taken = {job: float(reply) for job, reply in zip(order, replies, strict=True) if reply not in (b"", "")}
    assert taken == {"a": scores["a"], "b": scores["b"], "c": scores["c"]}
    # and each taken job is marked in progress with the lease, the held one keeps its holder's mark, the others none
    for job in ("a", "b", "c"):
        assert 0 < await redis.pttl(in_progress[job]) <= 5_000
    assert await redis.pttl(in_progress["held"]) > 5_000
    assert not await redis.exists(in_progress["later"], in_progress["d"])
    # and the queue is untouched (ARQ removes a job when it finishes)
    assert await redis.zcard(queue) == 6

    # And a second take finds only what is left
    again = await take(keys=keys, args=[now, 5_000, 3, *order])
    assert [job for job, reply in zip(order, again, strict=True) if reply not in (b"", "")] == ["d"]
