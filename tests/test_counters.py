"""The task counters behind /metrics (issue 20): counted by the `counters` plugin's hooks on real spore processes
(the engine HIVE_TEST_BROKER names) and where a status is made final off a spore, kept in one Redis hash, never
lost or doubled by a failed flush, and rendered by any Monitor from Redis (garbage in the hash skipped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from hive_framework import Hive, HiveConfig, Kernel, TaskStatus
from hive_framework.connection import redis_client
from hive_framework.counters import DURATION_BUCKETS, FINAL, Tally, final_deltas, parse_counters, retries_field
from hive_framework.keys import Keys
from hive_framework.models import TaskMessage, utcnow
from hive_framework.monitor import Monitor, create_app
from hive_framework.testing import delete_namespace, fast_config

from .integration_helpers import BASIC, open_gate, wait_running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
KINDS = ("finished", "retries", "bucket", "sum_us")


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    """A client that knows the test task types."""
    return Kernel(hive_config, apps=[BASIC])


async def scrape(monitor: Monitor) -> Samples:
    """Every sample of ``monitor``'s /metrics, read through its web app."""
    from .test_monitor_api import samples

    transport = httpx.ASGITransport(app=create_app(monitor))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def task_counters(found: Samples) -> dict[str, Any]:
    """The counter and histogram samples of a scrape, by metric, as plain dicts."""
    out: dict[str, dict[Any, float]] = {"finished": {}, "retries": {}, "count": {}, "sum": {}}
    for (name, labels), value in found.items():
        label = dict(labels)
        if name == "hive_tasks_finished_total":
            out["finished"][label["status"]] = value
        elif name == "hive_task_retries_total":
            out["retries"][label["task_type"]] = value
        elif name == "hive_task_duration_seconds_count":
            out["count"][(label["task_type"], label["status"])] = value
        elif name == "hive_task_duration_seconds_sum":
            out["sum"][(label["task_type"], label["status"])] = value
    return out


# --- across real spore processes -------------------------------------------------------------------------


@pytest.mark.redis
async def test_counters_follow_tasks_on_spore_processes_and_outlive_the_monitor(hive_config, spore_processes) -> None:
    # Given a spore process, and a client
    spore = spore_processes("counted", apps=(BASIC,), concurrency=4)
    async with Hive(Kernel(hive_config, apps=[BASIC])) as hive:
        # When five tasks complete, one completes after a retry, two fail for good after two retries each,
        # one is cancelled before it runs and one while it runs (and its handler completes afterwards)
        adds = [await hive.submit("add", {"a": i, "b": 1}) for i in range(5)]
        flaky = await hive.submit("flaky", {"failures": 1})
        hopeless = [await hive.submit("always_fail", {}) for _ in range(2)]
        later = await hive.submit("echo", {"n": 1}, delay="1h")
        running = await hive.submit("gated", {"label": "held", "gate": "counters"})
        await wait_running(hive, running, "counted")
        assert await hive.cancel(later) and await hive.cancel(running)
        await open_gate(hive, "counters")
        for task_id in [*adds, flaky]:
            assert (await hive.wait(task_id, timeout=30)).status == TaskStatus.COMPLETED
        for task_id in hopeless:
            assert (await hive.wait(task_id, timeout=30)).status == TaskStatus.FAILED
        # and the spore stops (it lets the cancelled task's handler finish, then writes what it counted last)
        assert await asyncio.to_thread(spore.stop) == 0
        assert (await hive.status(running)).status == TaskStatus.CANCELLED  # type: ignore[union-attr]

        # Then /metrics counts each task once, by its final status, with every retry and each run time
        first = task_counters(await scrape(Monitor(hive.broker)))
        assert first["finished"] == {"completed": 6, "failed": 2, "cancelled": 2}
        assert first["retries"] == {"flaky": 1, "always_fail": 4}
        assert first["count"] == {("add", "completed"): 5, ("flaky", "completed"): 1, ("always_fail", "failed"): 2}
        assert set(first["sum"]) == set(first["count"]) and all(v >= 0 for v in first["sum"].values())
        # and a Monitor started afresh (another nexus, or this one restarted) reports the very same figures
        assert task_counters(await scrape(Monitor(hive.broker))) == first


@pytest.mark.redis
async def test_a_zombie_the_watchdog_fails_is_counted_where_it_is_failed(hive) -> None:
    # Given a task recorded as running on a node that is gone, with no attempt left
    task_id = await hive.submit("echo", {"n": 1}, max_retries=0)
    message = await hive.status(task_id)
    message.status, message.attempt, message.assigned_node = TaskStatus.RUNNING, 1, "gone-node"
    message.started_at = utcnow()
    await hive.broker.save_task(message)
    before = task_counters(await scrape(Monitor(hive.broker)))

    # When the watchdog's recovery fails it for good
    assert await hive.broker.requeue_zombie(message, "node gone-node stopped beating") == "failed"

    # Then it is counted failed, with the run time it had
    after = task_counters(await scrape(Monitor(hive.broker)))
    assert before["finished"].get("failed", 0) == 0 and after["finished"]["failed"] == 1
    assert after["count"] == {("echo", "failed"): 1}


# --- flushing: nothing lost, nothing doubled ----------------------------------------------------------------


class FlakyScripts:
    """A Redis client stand-in whose counter script fails as planned: ``"before"`` it reaches Redis (Redis
    away), ``"after"`` it ran (the reply was lost), ``None`` not at all."""

    def __init__(self, redis: Redis, plan: list[str | None]) -> None:
        self.redis = redis
        self.plan = plan

    def register_script(self, body: str) -> Callable[..., Awaitable[Any]]:
        real = self.redis.register_script(body)

        async def call(keys: list[str], args: list[Any]) -> Any:
            mode = self.plan.pop(0) if self.plan else None
            if mode == "before":
                raise RedisConnectionError("planned: Redis is away")
            result = await real(keys=keys, args=args)
            if mode == "after":
                raise RedisConnectionError("planned: the reply was lost")
            return result

        return call


@contextlib.asynccontextmanager
async def counters_namespace(redis_url: str) -> AsyncIterator[tuple[Redis, Keys]]:
    """A client and the keys of a fresh test namespace (hypothesis runs many examples in one test), deleted after."""
    config = fast_config(redis_url)
    redis = redis_client(config)
    try:
        yield redis, Kernel(config, load_entry_points=False).keys
    finally:
        await asyncio.to_thread(delete_namespace, redis_url, config)
        await redis.aclose()


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["finished completed", "retries a", "retries b:c"]),
                  st.integers(min_value=1, max_value=1000)),
        st.tuples(st.just("flush"), st.sampled_from([None, "before", "after"]), st.just(0)),
    ),
    max_size=30,
)


@pytest.mark.redis
@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_a_flush_that_fails_loses_nothing_and_adds_nothing_twice(hive_redis_url: str, steps: list[Any]) -> None:
    async def scenario() -> None:
        async with counters_namespace(hive_redis_url) as (redis, keys):
            # Given a tally, and Redis failing some of its flushes before or after the script ran
            tally, added = Tally(), {}
            for kind, what, amount in steps:
                if kind == "add":
                    tally.add(what, amount)
                    added[what] = added.get(what, 0) + amount
                    continue
                with contextlib.suppress(RedisConnectionError):
                    await tally.flush(FlakyScripts(redis, [what]), keys.counters, keys.counters_flushed)
            # When Redis answers again and the spore flushes until nothing is left
            while tally.unwritten:
                await tally.flush(redis, keys.counters, keys.counters_flushed)
            # Then the hash holds every count exactly once
            stored = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.counters)).items()}
            assert stored == added
            assert await tally.flush(redis, keys.counters, keys.counters_flushed) == 0  # nothing left to send

    asyncio.run(scenario())


INT64 = (-(2**63), 2**63 - 1)
#: What a planted counters field may hold: an integer Redis adds to, one whose sum would overflow, or text.
PLANTED = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
    st.sampled_from([str(2**63 - 1), str(-(2**63)), "99999999999999999999"]),
    st.text(max_size=8).filter(lambda t: not t.lstrip("-").isdigit()),
)


@pytest.mark.redis
@settings(max_examples=40, deadline=None)
@given(planted=st.dictionaries(st.sampled_from(["finished completed", "retries a", "retries b", "sum_us x"]),
                               PLANTED, max_size=4),
       batch=st.dictionaries(st.sampled_from(["finished completed", "retries a", "retries b"]),
                             st.integers(min_value=1, max_value=1000), min_size=1, max_size=3))
def test_a_flush_over_planted_fields_adds_each_count_once_and_resets_what_redis_cannot_add_to(
    hive_redis_url: str, planted: dict[str, str], batch: dict[str, int]
) -> None:
    async def scenario() -> None:
        async with counters_namespace(hive_redis_url) as (redis, keys):
            # Given a counters hash with fields a hand wrote
            if planted:
                await redis.hset(keys.counters, mapping=planted)
            # When a spore flushes a batch over it
            tally = Tally()
            for field, amount in batch.items():
                tally.add(field, amount)
            assert await tally.flush(redis, keys.counters, keys.counters_flushed) == len(batch)
            # Then nothing is left to send, each readable count grew by the batch's once, anything Redis cannot
            # add to now holds the batch's count, and the fields outside the batch are as they were
            assert tally.unwritten == 0
            stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.counters)).items()}
            for field, amount in batch.items():
                before = planted.get(field, "0")
                total = int(before) + amount if before.lstrip("-").isdigit() else None
                expected = total if total is not None and INT64[0] <= int(before) and total <= INT64[1] else amount
                assert stored[field] == str(expected), (field, before, amount)
            assert {f: v for f, v in stored.items() if f not in batch} == {
                f: v for f, v in planted.items() if f not in batch}

    asyncio.run(scenario())


@pytest.mark.redis
async def test_a_counters_key_of_another_type_is_set_aside_and_counting_goes_on(hive, caplog) -> None:
    # Given the counters key written by hand as a string
    redis, key = hive.broker.redis, hive.broker.keys.counters
    await redis.set(key, "not a hash")

    # When a spore flushes its counts, and a task is cancelled (counted by the broker's own write)
    tally = Tally()
    tally.add("finished completed", 2)
    with caplog.at_level(logging.WARNING, logger="hive_framework.counters"):
        assert await tally.flush(redis, key, hive.broker.keys.counters_flushed) == 1
    await redis.set(key, "planted again")
    task_id = await hive.submit("echo", {"n": 1}, delay="1h")
    assert await hive.cancel(task_id)

    # Then the cancel stands, both strings were set aside whole under their own names, and the hash counts on
    assert (await hive.status(task_id)).status == TaskStatus.CANCELLED
    aside = sorted([k async for k in redis.scan_iter(match=f"{key}:unreadable:*")])
    assert len(aside) == 2 and sorted(await redis.mget(aside)) == [b"not a hash", b"planted again"]
    assert await redis.hgetall(key) == {b"finished cancelled": b"1"}
    # and the flush said so, naming the key and the type it found
    warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warnings) == 1 and key in warnings[0] and "held a string" in warnings[0]
    assert sum(k.decode() in warnings[0] for k in aside) == 1  # the very name it was set aside as


# --- reading the hash back ------------------------------------------------------------------------------------


def test_a_final_task_adds_a_finish_a_bucket_and_its_run_time() -> None:
    started = utcnow()
    task = TaskMessage(task_id="t", task_type="a.b:c", status=TaskStatus.COMPLETED, started_at=started,
                       completed_at=started + timedelta(seconds=0.3))
    assert final_deltas(task) == [("finished completed", 1), ("bucket completed 0.5 a.b:c", 1),
                                  ("sum_us completed a.b:c", 300_000)]
    task.status = TaskStatus.CANCELLED  # a cancelled task's run time is no task's run time
    assert final_deltas(task) == [("finished cancelled", 1)]
    counters, skipped = parse_counters({f: str(n) for f, n in final_deltas(task)} | {retries_field("x y"): "2"})
    assert (counters.finished, counters.retries, skipped) == ({"cancelled": 1}, {"x y": 2}, [])


TASK_TYPES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
COUNTS = st.integers(min_value=0, max_value=2**62)


@given(
    finished=st.dictionaries(st.sampled_from([s.value for s in FINAL]), COUNTS),
    retries=st.dictionaries(TASK_TYPES, COUNTS, max_size=4),
    durations=st.lists(st.tuples(TASK_TYPES, st.sampled_from([s.value for s in FINAL]),
                                 st.floats(min_value=0, max_value=10_000)), max_size=20),
    garbage=st.dictionaries(st.text(max_size=30), st.text(max_size=12), max_size=8),
)
def test_counters_read_back_as_written_and_anything_else_is_skipped(
    finished: dict[str, int], retries: dict[str, int], durations: list[tuple[str, str, float]],
    garbage: dict[str, str],
) -> None:
    # Given a hash as the hive writes it (finishes, retries, run times), with other fields planted in it
    tally = Tally()
    for status, count in finished.items():
        tally.add(f"finished {status}", count)
    for task_type, count in retries.items():
        tally.add(retries_field(task_type), count)
    started = utcnow()
    for task_type, status, seconds in durations:
        task = TaskMessage(task_id="t", task_type=task_type, status=TaskStatus(status), started_at=started,
                           completed_at=started + timedelta(seconds=seconds))
        for field, amount in final_deltas(task)[1:]:
            tally.add(field, amount)
    written = {field: str(count) for field, count in tally.pending.items()}
    planted = {k: v for k, v in garbage.items() if k not in written}

    # When it is read back, alone and with the planted fields
    counters, skipped = parse_counters(written)
    _, skipped_among_planted = parse_counters({**written, **planted})

    # Then the hive's own fields read as written
    assert skipped == []
    assert counters.finished == finished and counters.retries == retries
    timed = [(t, s) for t, s, _ in durations if s != "cancelled"]
    assert {key: sum(counts) for key, counts in counters.buckets.items()} == {k: timed.count(k) for k in timed}
    assert all(len(counts) == len(DURATION_BUCKETS) for counts in counters.buckets.values())
    # and a planted field is skipped unless it is one the hive could have written (a known kind, a count);
    # reading never fails
    assert not set(skipped_among_planted) & set(written)
    for field, value in planted.items():
        readable = value.isascii() and value.isdigit() and field.partition(" ")[0] in KINDS
        assert field in skipped_among_planted or readable


@pytest.mark.redis
async def test_metrics_skip_and_log_a_garbage_field_in_the_counters_hash(hive, caplog) -> None:
    # Given the counters hash with real counts and fields nobody should have written
    key = hive.broker.keys.counters
    await hive.broker.redis.hset(key, mapping={
        "finished completed": 3, "retries echo": 2, "bucket completed 0.5 echo": 1, "sum_us completed echo": 250_000,
        "finished exploded": 1, "retries echo ": "x", "bucket completed 0.3 echo": 1, "nonsense": "1",
        "finished failed": "-4", "sum_us completed": 5, b"finished \xff": 1,
    })
    monitor = Monitor(hive.broker)

    # When /metrics is scraped (twice)
    with caplog.at_level(logging.WARNING, logger="hive_framework.monitor.metrics"):
        found = task_counters(await scrape(monitor))
        again = task_counters(await scrape(monitor))

    # Then the readable counts are there and the rest is left out, and logged once
    assert found == again
    assert found["finished"] == {"completed": 3}
    assert found["retries"] == {"echo": 2}
    assert found["count"] == {("echo", "completed"): 1} and found["sum"] == {("echo", "completed"): 0.25}
    warnings = [r.getMessage() for r in caplog.records if "unreadable field" in r.getMessage()]
    assert len(warnings) == 1 and "skipping 7 unreadable field(s)" in warnings[0] and key in warnings[0]


async def test_metrics_render_the_gauges_when_the_counters_key_holds_another_type(hive, caplog) -> None:
    # Given a counters key written by hand as a string
    await hive.broker.redis.set(hive.broker.keys.counters, "not a hash")
    monitor = Monitor(hive.broker)
    # When /metrics is scraped (twice), it answers (scrape asserts 200) with the gauges and no task counters
    with caplog.at_level(logging.WARNING, logger="hive_framework.monitor.metrics"):
        found = await scrape(monitor)
        await scrape(monitor)
    assert any(name == "hive_tasks" for name, _ in found)  # the tasks-by-status gauge
    assert task_counters(found) == {"finished": {}, "retries": {}, "count": {}, "sum": {}}
    # and the problem is logged once
    assert len([r for r in caplog.records if "cannot read the task counters" in r.getMessage()]) == 1


def test_each_kernel_has_its_own_counters_plugin() -> None:
    config = fast_config("redis://127.0.0.1:1/0")
    one, two = (Kernel(config, load_entry_points=False) for _ in range(2))
    first, second = one.pm.get_plugin("counters"), two.pm.get_plugin("counters")
    assert first is not None and second is not None and first is not second
    assert first.tally is not second.tally
