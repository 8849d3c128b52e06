"""Poison isolation: arbitrary bytes planted in every kind of key the hive writes never stop a spore, a watchdog
sweep, the Monitor's snapshot or the broker's API calls; an undecodable task record is quarantined once with
its raw bytes and reason, acknowledged, and does not come back. Runs on the engine ``HIVE_TEST_BROKER`` names."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive_framework import Kernel, TaskStatus
from hive_framework.broker.finished import THROUGHPUT_BUCKET_S, count_commands
from hive_framework.broker.placement import registry_key, unserved_key
from hive_framework.broker.poison import RAW_CAP, dead_records
from hive_framework.broker.records import add_to_pipeline
from hive_framework.cli import cli
from hive_framework.hive import Hive
from hive_framework.monitor.collector import Monitor
from hive_framework.nexus import Watchdog
from hive_framework.redisutil import command_keys
from hive_framework.spore import Spore

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis

junk = st.binary(min_size=0, max_size=300)


async def plant(hive: Hive, tag: str, data: st.DataObject) -> tuple[str, bytes]:
    """Arbitrary bytes in every key type the hive writes; returns the planted task's id and record."""
    broker, keys, redis = hive.broker, hive.broker.keys, hive.broker.redis
    engine = broker.engine
    bad_id = f"bad-{tag}"
    record = data.draw(junk.filter(lambda b: not _decodes(b)), label="task record")
    await redis.set(keys.task(bad_id), record)
    for status in (TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.FAILED):
        await redis.zadd(keys.status_index(status), {bad_id: 1})
        await redis.zadd(keys.status_index(status), {data.draw(junk, label="index member") or b"x": 1})
    await redis.zadd(keys.dead_letters, {bad_id: 1, data.draw(junk, label="dead member") or b"y": 2})
    await redis.zadd(keys.unrouted, {bad_id: 1, data.draw(junk, label="unrouted member") or b"z": 2})
    # a heartbeat and a node info that do not decode, and a node id that is garbage
    await redis.set(keys.node(f"n-{tag}"), data.draw(junk, label="heartbeat"), px=60_000)
    await redis.sadd(keys.nodes, f"n-{tag}", data.draw(junk, label="node id") or b"w")
    await redis.hset(keys.node_infos, f"n-{tag}", data.draw(junk, label="node info"))
    await redis.hset(keys.node_infos, data.draw(junk, label="node info field") or b"v", b"{")
    # a reply list and a map-reduce job that do not decode
    await redis.rpush(keys.reply(f"m-{tag}"), data.draw(junk, label="reply"))
    await redis.zadd(keys.jobs, {data.draw(junk, label="job id") or b"j": 1})
    # the task types: the registry of advertised options, the waiting-for-a-spore index, the queued types
    await redis.hset(registry_key(keys), f"remote-{tag}", data.draw(junk, label="advertised options"))
    await redis.hset(registry_key(keys), data.draw(junk, label="registry field") or b"r", b"[1]")
    await redis.zadd(unserved_key(keys), {bad_id: 1, data.draw(junk, label="unserved member") or b"u": 2})
    await redis.sadd(engine.key("types"), data.draw(junk, label="queued type") or b"t")
    # the queue the spore reads (its type's): the planted task's job, plus an entry or job that is garbage
    queue = engine.queue_for(0, None, "echo")
    if engine.name == "streams":
        await redis.xadd(queue, {"t": bad_id, "j": bad_id})
        await redis.xadd(queue, {data.draw(junk, label="field") or b"f": data.draw(junk)})
        await redis.zadd(engine.delayed, {data.draw(junk, label="delayed member") or b"d": 0})
        await redis.hset(engine.entries, data.draw(junk, label="entries field") or b"e", data.draw(junk))
    else:
        await redis.psetex(engine.arq_keys.job(bad_id), 60_000, data.draw(junk, label="arq job"))
        await redis.zadd(queue, {bad_id: 0, data.draw(junk, label="queue member") or b"q": 0})
    # the finished-tasks counters the next completion adds to: text, and a key of another type
    now = time.time()
    for command in count_commands(keys, broker.config.result_ttl, TaskStatus.COMPLETED, now):
        await redis.delete(command[1])
        await redis.set(command[1], data.draw(junk, label="counter"))
    await redis.delete(keys.finished(TaskStatus.COMPLETED.value, THROUGHPUT_BUCKET_S, int(now // 10 * 10) + 10))
    await redis.rpush(keys.finished(TaskStatus.COMPLETED.value, THROUGHPUT_BUCKET_S, int(now // 10 * 10) + 10), b"l")
    # and a broadcast that does not decode
    await redis.publish(keys.broadcast_channel, data.draw(junk, label="broadcast"))
    return bad_id, record


def _decodes(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_planted_garbage_in_every_key_type_stops_nothing(hive_config, data):
    async def scenario() -> None:
        kernel = Kernel(hive_config, apps=[BASIC])
        hive = await Hive(kernel).open()
        tag = uuid.uuid4().hex[:8]
        spore = Spore(kernel, name=f"p-{tag}", concurrency=2)
        runner = asyncio.create_task(spore.run(install_signals=False))
        try:
            await spore.wait_ready()
            # Given garbage in every key type, under a live spore
            bad_id, record = await plant(hive, tag, data)

            # and, where the good task's save writes, keys of another type: its done list (a waiter's mark
            # makes the save push to it) and the final index it joins
            good_id = f"good-{tag}"
            await hive.broker.redis.set(hive.broker.keys.done(good_id), data.draw(junk, label="done list"))
            await hive.broker.redis.set(hive.broker.keys.waiters(good_id), b"1", px=600_000)
            await hive.broker.redis.set(hive.broker.keys.status_index(TaskStatus.COMPLETED), b"i")

            # When a good task is submitted after it
            good = await hive.submit("echo", {"n": 1}, task_id=good_id)

            # Then the spore kept serving: the good task completes, its save replacing the keys of another type
            done = await hive.wait(good, timeout=30)
            assert done.status == TaskStatus.COMPLETED
            assert not runner.done()
            assert await hive.broker.redis.zscore(hive.broker.keys.status_index(TaskStatus.COMPLETED), good)

            # and a watchdog sweeps, and the Monitor reads everything
            watchdog = Watchdog(hive.broker, interval=1.0)
            await watchdog.sweep()
            await watchdog.sweep()
            assert await Monitor(hive.broker).snapshot()
            # and the broker's calls all answer
            await hive.queue_stats()
            await hive.nodes()
            await hive.broker.get_cluster_nodes()
            await hive.broker.dead_letters()
            view = await hive.broker.type_view(fresh=True)
            assert "echo" in view.served
            await hive.submit(f"remote-{tag}", {}, allow_unknown=True)  # options garbage: the hive's defaults
            assert await hive.status(bad_id) is None
            # and the poison task record is quarantined once, raw bytes and reason kept, its key gone
            found = [r for r in await dead_records(hive.broker.redis, hive.broker.keys, limit=10_000)
                     if r["record"] == hive.broker.keys.task(bad_id)]
            assert len(found) == 1
            raw = await _raw(hive, bad_id)
            assert raw is None
            kept = base64.b64decode(found[0]["raw_base64"])
            assert kept == record[:RAW_CAP]
            assert found[0]["reason"]
            for status in TaskStatus:
                assert await hive.broker.redis.zscore(hive.broker.keys.status_index(status), bad_id) is None
        finally:
            spore.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 30)
            await hive.close()

    asyncio.run(scenario())


async def test_keys_of_another_type_where_readers_read_stop_no_sweep_snapshot_or_call(hive, caplog):
    # Given a string (planted by hand, or left by a bug) at every index, set and hash the readers read
    keys, redis = hive.broker.keys, hive.broker.redis
    planted = [
        *(keys.status_index(status) for status in TaskStatus), keys.dead_letters, keys.unrouted, keys.jobs,
        unserved_key(keys), registry_key(keys), keys.nodes, keys.node_infos, keys.dead_records_index,
        keys.dead_records, hive.broker.engine.key("types"), keys.schedule_defs, keys.schedule_ticks,
    ]
    for key in planted:
        await redis.set(key, b"not the type you read")

    # When a watchdog sweeps, the Monitor takes its snapshot and a client calls the broker
    watchdog = Watchdog(hive.broker, interval=1.0)
    await watchdog.sweep()
    await watchdog.sweep()
    snapshot = await Monitor(hive.broker).snapshot()

    # Then each reads those keys as empty: nothing fails, nothing is counted
    assert (snapshot["trouble"]["dead_letter_count"], snapshot["trouble"]["parked"]) == (0, 0)
    stats = await hive.queue_stats()
    assert stats["tasks_running"] == stats["tasks_completed"] == 0
    assert await hive.nodes() == []
    assert await hive.broker.get_cluster_nodes() == ([], [])
    assert await hive.broker.dead_letters() == []
    assert await dead_records(redis, keys) == []
    assert await hive.broker.detect_zombie_tasks() == []
    # and each warning names the key it read as empty, also where one round trip read many keys
    for key in (keys.status_index(TaskStatus.RUNNING), keys.status_index(TaskStatus.COMPLETED), keys.jobs,
                keys.dead_records_index, keys.dead_letters):
        assert f"{key} holds another type than the hive keeps there" in caplog.text, key
    assert " index holds another type" not in caplog.text


def test_the_keys_of_a_pipeline_are_named_for_its_warnings() -> None:
    # Given a pipeline (never sent) holding a plain command, a script over two keys and one that names no key
    pipe = redis.asyncio.Redis().pipeline(transaction=False)
    pipe.zcard("hive:status:running")
    pipe.evalsha("0" * 40, 2, "hive:q:high", "hive:entries", "arg")
    pipe.ping()
    # Then each command's key is named: a script's keys all, a keyless command by its name
    assert command_keys(pipe) == ["hive:status:running", "hive:q:high, hive:entries", "PING"]


@pytest.mark.parametrize("server", ["redis", "fakeredis"])
def test_the_status_runner_replaces_a_key_of_another_type_and_fails_on_other_errors(hive_config, server):
    # The embedded default runs the same Lua on fakeredis, whose errors are not plain strings.
    client = (redis.Redis.from_url(hive_config.effective_redis_url()) if server == "redis"
              else fakeredis.FakeRedis())
    listed, counted = f"{hive_config.key_prefix}:done:x", f"{hive_config.key_prefix}:finished:x"
    try:
        # Given a string where a list goes, and text where a counter goes
        client.set(listed, b"planted")
        client.set(counted, b"planted")
        # When status commands push to the one and count the other
        pipe = client.pipeline(transaction=True)
        add_to_pipeline(pipe, [("RPUSH", listed, "completed"), ("HIVE.COUNT", counted, 60_000),
                               ("LRANGE", listed, 0, -1)])
        (reply,) = pipe.execute()
        # Then the list was made afresh (the reply is the last command's), and the count started at 1 with its TTL
        assert reply == [b"completed"]
        assert client.get(counted) == b"1" and 0 < client.pttl(counted) <= 60_000
        # and an error that is not a key's type still fails the call, naming the command
        pipe = client.pipeline(transaction=True)
        add_to_pipeline(pipe, [("INCR", listed, "extra")])
        with pytest.raises(redis.ResponseError) as failed:
            pipe.execute()
        if server == "redis":  # fakeredis loses the message of an error a script raises again
            assert "wrong number of arg" in str(failed.value).lower()
    finally:
        client.delete(listed, counted)
        client.close()


async def _raw(hive: Hive, task_id: str) -> bytes | None:
    return await hive.broker.redis.get(hive.broker.keys.task(task_id))


def test_hive_dead_points_at_quarantined_records_and_lists_them(hive_config, tmp_path, monkeypatch):
    # Given a task record that does not decode, quarantined when a client read it
    async def plant_and_read() -> None:
        hive = await Hive(Kernel(hive_config, apps=[BASIC])).open()
        try:
            await hive.broker.redis.set(hive.broker.keys.task("bad-cli"), b"{not json")
            assert await hive.status("bad-cli") is None
        finally:
            await hive.close()

    asyncio.run(plant_and_read())
    monkeypatch.chdir(tmp_path)  # the CLI reads ./.env and ./hive.toml
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("HIVE_", "REDIS_"))}
    env.update(hive_config.to_env())

    # When the dead letters are listed, then the quarantined record is pointed at
    plain = CliRunner().invoke(cli, ["dead"], env=env)
    assert plain.exit_code == 0, plain.output
    assert "no dead letters" in plain.stdout
    assert "1 quarantined record(s)" in plain.stderr and "hive dead --records" in plain.stderr

    # and --records lists it with its reason and raw bytes
    listed = CliRunner().invoke(cli, ["dead", "--records", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["record"].endswith(":task:bad-cli")
    assert base64.b64decode(row["raw_base64"]) == b"{not json"
    assert "not valid JSON" in row["reason"]
    table = CliRunner().invoke(cli, ["dead", "--records"], env=env)
    assert ":task:bad-cli  9 bytes" in table.stdout


def test_dead_records_entries_that_are_not_json_objects_show_as_unreadable(hive_config, tmp_path, monkeypatch):
    # Given a real quarantined record, and beside it entries written straight into the dead-records hash
    # that are not what quarantine() writes: a JSON list, a number, invalid JSON, an object with a bad time
    planted = {
        "planted-list": b"[1, 2]",
        "planted-number": b"42",
        "planted-junk": b"\xff{not json",
        "planted-far-future": json.dumps(
            {"record": "planted-far-future", "reason": "r", "size": 1, "at": 1e300}).encode(),
    }

    async def plant_and_list() -> list[dict]:
        hive = await Hive(Kernel(hive_config, apps=[BASIC])).open()
        try:
            redis, keys = hive.broker.redis, hive.broker.keys
            await redis.set(keys.task("bad-real"), b"{not json")
            assert await hive.status("bad-real") is None
            for n, (name, raw) in enumerate(planted.items()):
                await redis.hset(keys.dead_records, name, raw)
                await redis.zadd(keys.dead_records_index, {name: 1_000_000 + n})
            return await dead_records(redis, keys)
        finally:
            await hive.close()

    # When they are read, then every entry is a row with the common fields; the foreign ones marked unreadable
    rows = {r["record"]: r for r in asyncio.run(plant_and_list())}
    assert len(rows) == 5
    for name in ("planted-list", "planted-number", "planted-junk"):
        assert rows[name]["unreadable"] is True
        assert "unreadable dead-records entry" in rows[name]["reason"]
        assert base64.b64decode(rows[name]["raw_base64"]) == planted[name]
    assert "JSON list" in rows["planted-list"]["reason"]
    assert "not valid JSON" in rows["planted-junk"]["reason"]
    real = next(r for name, r in rows.items() if name.endswith(":task:bad-real"))
    assert "unreadable" not in real

    # and the CLI lists them all, as a table and as JSON, without crashing
    monkeypatch.chdir(tmp_path)  # the CLI reads ./.env and ./hive.toml
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("HIVE_", "REDIS_"))}
    env.update(hive_config.to_env())
    table = CliRunner().invoke(cli, ["dead", "--records"], env=env)
    assert table.exit_code == 0, table.output
    assert "planted-list  6 bytes  unreadable dead-records entry" in table.stdout
    assert "????-??-?? ??:??:?? UTC  planted-far-future" in table.stdout and ":task:bad-real  9 bytes" in table.stdout
    listed = CliRunner().invoke(cli, ["dead", "--records", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == 5
