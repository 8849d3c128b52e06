"""Bounded memory without any reader: final status indexes and dead letters are trimmed by their writers and by
the watchdog's sweep, offline nodes are forgotten, and consumers of stopped spores leave the stream groups."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import Kernel, TaskStatus, wire
from hive_framework.broker import finished, records
from hive_framework.broker.records import DONE_MARKER_TTL_MS, status_commands
from hive_framework.broker.retention import trim
from hive_framework.models import NodeInfo, TaskMessage
from hive_framework.nexus import Watchdog
from hive_framework.testing import async_wait_until, fast_config

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_config(hive_redis_url):
    from hive_framework.testing import delete_namespace

    config = fast_config(hive_redis_url, result_ttl=1.0)
    yield config
    delete_namespace(hive_redis_url, config)


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


async def test_final_indexes_and_dead_letters_are_trimmed_by_their_writers(hive, run_spore):
    # Given tasks that completed and failed, whose records then expired (HIVE_RESULT_TTL=1 s here)
    await run_spore(name="trim", concurrency=4)
    first = [await hive.submit("echo", {"i": i}) for i in range(5)]
    failed = [await hive.submit("always_fail", {}, max_retries=0) for _ in range(3)]
    for task_id in first + failed:
        await hive.wait(task_id, timeout=30)
    redis, keys = hive.broker.redis, hive.broker.keys

    async def expired() -> bool:
        return not await redis.exists(*[keys.task(t) for t in first + failed])

    await async_wait_until(expired, timeout=15, what="the records to expire")
    assert await redis.zcard(keys.status_index(TaskStatus.COMPLETED)) == 5  # nothing read them since

    # When one more task completes and one more fails (no reader calls get_queue_stats)
    last = await hive.submit("echo", {"i": 99})
    last_failed = await hive.submit("always_fail", {}, max_retries=0)
    await hive.wait(last, timeout=30)
    await hive.wait(last_failed, timeout=30)

    # Then the indexes and the dead letters hold only entries whose record still exists
    assert [m.decode() for m in await redis.zrange(keys.status_index(TaskStatus.COMPLETED), 0, -1)] == [last]
    assert [m.decode() for m in await redis.zrange(keys.status_index(TaskStatus.FAILED), 0, -1)] == [last_failed]
    assert [m.decode() for m in await redis.zrange(keys.dead_letters, 0, -1)] == [last_failed]


async def test_a_sweep_trims_old_entries_and_forgets_long_offline_nodes(hive):
    # Given index entries, dead letters and job ids older than HIVE_RESULT_TTL, and a node offline that long
    redis, keys = hive.broker.redis, hive.broker.keys
    old = time.time() - 3600
    await redis.zadd(keys.status_index(TaskStatus.COMPLETED), {"gone-1": old, "gone-2": old})
    await redis.zadd(keys.dead_letters, {"gone-3": old})
    await redis.zadd(keys.jobs, {"job-1": old})
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    info = NodeInfo(node_id="host-1234", node_name="host-1234", host="host", pid=1234, last_heartbeat=long_ago,
                    started_at=long_ago)
    await redis.hset(keys.node_infos, "host-1234", wire.dumps(info))
    await redis.sadd(keys.nodes, "host-1234")
    # and a fresh entry
    await redis.zadd(keys.status_index(TaskStatus.COMPLETED), {"fresh": time.time()})

    # When the leader's watchdog sweeps
    await Watchdog(hive.broker, interval=1.0).sweep()

    # Then only the fresh entry is left, and the node id is forgotten
    assert await redis.zrange(keys.status_index(TaskStatus.COMPLETED), 0, -1) == [b"fresh"]
    assert await redis.zcard(keys.dead_letters) == 0
    assert await redis.zcard(keys.jobs) == 0
    assert not await redis.hexists(keys.node_infos, "host-1234")
    assert not await redis.sismember(keys.nodes, "host-1234")


async def test_a_trimming_pass_counts_each_kind_it_removed(hive):
    # Given old entries: two in final indexes (completed, cancelled), one dead letter, three job ids
    redis, keys = hive.broker.redis, hive.broker.keys
    old = time.time() - 3600
    await redis.zadd(keys.status_index(TaskStatus.COMPLETED), {"gone-1": old})
    await redis.zadd(keys.status_index(TaskStatus.CANCELLED), {"gone-2": old})
    await redis.zadd(keys.dead_letters, {"gone-3": old})
    await redis.zadd(keys.jobs, {"job-1": old, "job-2": old, "job-3": old})

    # When one trimming pass runs, then its counts say what it removed, each under its own kind
    assert await trim(hive.broker) == {"index_entries": 2, "dead_letters": 1, "jobs": 3, "dead_records": 0,
                                       "nodes": 0}


async def test_consumers_of_stopped_spores_leave_the_stream_groups(hive, run_spore):
    if hive.broker.engine.name != "streams":
        pytest.skip("stream groups are the streams engine's")
    from hive_framework.engines.streams.worker import GROUP

    spore = await run_spore(name="pruner", concurrency=1)
    engine, redis = hive.broker.engine, hive.broker.redis
    stream = engine.type_stream(0, sorted(spore.kernel.task_types)[0])

    async def group_made() -> bool:
        return bool(await redis.exists(stream)) and bool(await redis.xinfo_groups(stream))

    await async_wait_until(group_made, timeout=15, what="the spore's consumer group")
    # Given consumers left behind by killed spores: two holding nothing, one holding an entry
    for name in ("dead-1", "dead-2"):
        await redis.xgroup_createconsumer(stream, GROUP, name)
    spore.pause()

    async def dead_3_holds_one() -> bool:
        # a read the pause cancelled may still take an entry that Redis delivered before it saw the hang-up
        await redis.xadd(stream, {"t": "orphan", "j": "orphan"})
        return bool(await redis.xreadgroup(GROUP, "dead-3", {stream: ">"}, count=1))

    await async_wait_until(dead_3_holds_one, timeout=15, what="an entry held by dead-3")

    # When a spore prunes idle consumers
    removed = await spore.worker.prune_consumers(idle_s=0)

    # Then the empty ones are gone and the one holding an entry stays (its entry is taken over first)
    names = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
             for c in await redis.xinfo_consumers(stream, GROUP)}
    assert removed >= 2
    assert not {"dead-1", "dead-2"} & names
    assert "dead-3" in names


async def test_a_finished_record_is_stored_without_its_default_fields_and_reads_back_whole(hive, run_spore):
    # Given a task that ran to completion on a spore
    await run_spore(name="compact", concurrency=1)
    task_id = await hive.submit("echo", {"i": 1})
    done = await hive.wait(task_id, timeout=30)
    assert done.status == TaskStatus.COMPLETED
    # Then its stored record leaves out what holds a default (a finished task is kept for HIVE_RESULT_TTL)
    stored = json.loads(await hive.broker.redis.get(hive.broker.keys.task(task_id)))
    assert {"error", "depends_on", "chunk", "headers", "progress", "wait_timeout"}.isdisjoint(stored)
    # nor the engine's bookkeeping, and its times are integers (microseconds since the epoch)
    assert {"queue", "engine_job_id", "task_id"}.isdisjoint(stored)
    assert all(isinstance(stored[k], int) for k in ("created_at", "started_at", "completed_at"))
    assert len(wire.dumps(done, omit_defaults=True)) < len(wire.dumps(done))
    # and the record reads back with every field
    again = await hive.status(task_id)
    assert again == done
    assert (again.error, again.depends_on, again.headers) == (None, [], {})


def test_a_done_marker_lives_seconds_while_the_record_lives_the_result_ttl():
    # Given a day of result retention and a finished task
    config = fast_config("redis://127.0.0.1:6379/0", result_ttl=86400.0)
    message = TaskMessage(task_id="t1", task_type="echo", status=TaskStatus.COMPLETED)
    keys = Kernel(config).keys
    # When its status writes are built
    commands = status_commands(keys, config, message, TaskStatus.RUNNING)
    # Then the record is kept for the day and the waiters' wake-up list for seconds only
    assert ("PSETEX", keys.task("t1"), 86_400_000) == commands[0][:3]
    assert (records.WAKE, keys.waiters("t1"), keys.done("t1"), "completed", DONE_MARKER_TTL_MS) in commands
    assert DONE_MARKER_TTL_MS <= 30_000


async def test_a_waiter_on_a_finished_task_whose_done_marker_expired_returns_at_once(hive, run_spore):
    # Given a finished task whose done marker has expired
    await run_spore(name="marker", concurrency=1)
    task_id = await hive.submit("echo", {"i": 1})
    await hive.wait(task_id, timeout=30)
    await hive.broker.redis.delete(hive.broker.keys.done(task_id))
    # When a client waits for it with almost no time to wait, then it is answered from the record (a wait
    # that needed the marker would block and time out instead)
    again = await hive.wait(task_id, timeout=0.001)
    assert again.status == TaskStatus.COMPLETED


async def test_only_a_task_someone_waits_for_gets_a_done_list(hive, run_spore):
    # Given a spore, a task nobody waits for and one a client waits on while it runs
    await run_spore(name="wake", concurrency=2)
    unwatched = await hive.submit("echo", {"i": 1})
    watched = await hive.submit("sleep_async", {"seconds": 0.5})
    waiter = asyncio.create_task(hive.wait(watched, timeout=30))
    # When both complete
    assert (await waiter).status == TaskStatus.COMPLETED
    assert (await hive.wait(unwatched, timeout=30)).status == TaskStatus.COMPLETED
    # Then the spore's save woke the waiter through a done list, and the other task got none
    redis, keys = hive.broker.redis, hive.broker.keys
    assert await redis.llen(keys.done(watched)) == 1
    assert 0 < await redis.pttl(keys.done(watched)) <= records.WAITER_MARK_TTL_MS
    assert not await redis.exists(keys.done(unwatched))


async def test_a_final_index_keeps_the_newest_ids_while_the_counts_keep_every_task(hive, monkeypatch):
    # Given final indexes that keep only the newest 3 ids (RECENT_KEPT is 1,000)
    monkeypatch.setattr(records, "RECENT_KEPT", 3)
    before = await hive.broker.get_queue_stats()
    # When 5 tasks complete and 2 fail
    ids = []
    for i in range(7):
        task_id = await hive.submit("echo", {"i": i})
        ids.append(task_id)
        message = await hive.status(task_id)
        message.status = TaskStatus.COMPLETED if i < 5 else TaskStatus.FAILED
        await hive.broker.save_task(message, TaskStatus.PENDING)
    redis, keys = hive.broker.redis, hive.broker.keys
    # Then the completed index holds the newest three of them, and the failed one both
    assert [m.decode() for m in await redis.zrange(keys.status_index(TaskStatus.COMPLETED), 0, -1)] == ids[2:5]
    assert await redis.zcard(keys.status_index(TaskStatus.FAILED)) == 2
    # and the counts have every one, as has the Monitor's last minute
    stats = await hive.broker.get_queue_stats()
    added = (stats["tasks_completed"] - before["tasks_completed"], stats["tasks_failed"] - before["tasks_failed"])
    assert added == (5, 2)
    # and nothing per task is kept beside the records: one counter per status and bucket
    counters = [k async for k in redis.scan_iter(match=f"{keys.prefix}:finished:*", count=1000)]
    assert 0 < len(counters) <= 2 * 2 * 2  # two statuses, two widths, a bucket boundary crossed at most once


@given(now=st.floats(min_value=1.6e9, max_value=2.1e9), ttl=st.floats(min_value=1.0, max_value=30 * 86400.0),
       later=st.floats(min_value=0.0, max_value=1.0))
def test_a_finished_count_is_read_while_in_its_window_and_its_key_lives_that_long(now: float, ttl: float,
                                                                                   later: float) -> None:
    # Given the counters one task finishing at `now` adds to (a 10 s throughput bucket and a count bucket)
    keys = Kernel(fast_config("redis://127.0.0.1:6379/0", result_ttl=ttl)).keys
    commands = finished.count_commands(keys, ttl, TaskStatus.COMPLETED, now)
    expiry = {c[1]: c[2] for c in commands if c[0] == finished.COUNT}
    width = finished.count_width(ttl)
    [count_key] = [key for key in expiry if key.split(":")[-2] == str(width)]
    assert len(expiry) == len([c for c in commands if c[0] == finished.COUNT])  # each counter counted once
    # When the counts are read any time within the TTL after it
    moment = now + later * ttl * 0.999
    read = [keys.finished("completed", width, start) for start in finished._starts(width, moment - ttl, moment)]
    # Then its bucket is among those read, and its key has not expired by then
    assert count_key in read
    assert now + expiry[count_key] / 1000 >= moment
