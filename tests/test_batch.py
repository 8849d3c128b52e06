"""The enqueue batch: commands queued on a transaction pipeline, run as one script call, leave what MULTI/EXEC does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from hive_framework.broker import batch
from hive_framework.broker.batch import Batches
from hive_framework.hive import Hive

from .private_redis import PrivateRedis

pytestmark = pytest.mark.redis

#: A script queued whole inside the block, as an engine's enqueue does (it cannot be called from the batch).
APPEND = "local n = redis.call('RPUSH', KEYS[1], ARGV[1])\nredis.call('HSET', KEYS[2], ARGV[1], n)\nreturn n"

values = st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**40), 2**40))


async def state(hive: Hive, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its whole value, to compare two runs."""
    redis = hive.broker.redis
    out: dict[str, Any] = {}
    for key in sorted([k async for k in redis.scan_iter(match=f"{prefix}*")]):
        kind = (await redis.type(key)).decode()
        name = key.decode().removeprefix(prefix)
        if kind == "string":
            out[name] = await redis.get(key)
        elif kind == "list":
            out[name] = await redis.lrange(key, 0, -1)
        elif kind == "hash":
            out[name] = await redis.hgetall(key)
        elif kind == "set":
            out[name] = sorted(await redis.smembers(key))
        elif kind == "zset":
            out[name] = await redis.zrange(key, 0, -1, withscores=True)
        await redis.delete(key)
    return out


def queue(pipe: Any, prefix: str, items: list[tuple[Any, Any]]) -> None:
    for i, (a, b) in enumerate(items):
        pipe.set(f"{prefix}s{i}", a)
        pipe.sadd(f"{prefix}set", b)
        pipe.zadd(f"{prefix}z", {str(a): i})
        pipe.hset(f"{prefix}h", str(i), b)
        pipe.eval(APPEND, 2, f"{prefix}list", f"{prefix}pos", str(b))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(values, values), max_size=6))
async def test_a_batch_leaves_what_multi_exec_leaves(hive: Hive, items: list[tuple[Any, Any]]) -> None:
    # Given the same commands (plain ones and a script queued whole) for MULTI/EXEC and for the batch
    prefix = f"{hive.broker.config.key_prefix}:batch:"
    async with hive.broker.redis.pipeline(transaction=True) as pipe:
        queue(pipe, prefix, items)
        await pipe.execute()
    expected = await state(hive, prefix)
    # When they run as one script call
    async with hive.broker.redis.pipeline(transaction=True) as pipe:
        queue(pipe, prefix, items)
        await Batches(hive.broker.redis).execute(pipe)
        assert not pipe.command_stack  # nothing left to run twice
    # Then Redis holds exactly the same
    assert await state(hive, prefix) == expected


async def test_a_block_the_batch_cannot_express_runs_as_multi_exec(hive: Hive, monkeypatch: Any) -> None:
    prefix = f"{hive.broker.config.key_prefix}:batch2:"
    batches = Batches(hive.broker.redis)
    # An EVALSHA (the script may be missing: only MULTI/EXEC reports that per command) runs as the block
    sha = await hive.broker.redis.script_load("return redis.call('SET', KEYS[1], ARGV[1])")
    async with hive.broker.redis.pipeline(transaction=True) as pipe:
        pipe.evalsha(sha, 1, f"{prefix}a", "1")
        pipe.set(f"{prefix}b", "2")
        await batches.execute(pipe)
    assert await hive.broker.redis.mget(f"{prefix}a", f"{prefix}b") == [b"1", b"2"]
    assert not batches._scripts  # no batch script was made for it
    # So does a block too big for one script call
    monkeypatch.setattr(batch, "MAX_ARGS", 5)
    async with hive.broker.redis.pipeline(transaction=True) as pipe:
        for i in range(3):
            pipe.set(f"{prefix}c{i}", i)
        await batches.execute(pipe)
    assert await hive.broker.redis.mget([f"{prefix}c{i}" for i in range(3)]) == [b"0", b"1", b"2"]
    assert not batches._scripts
    await state(hive, prefix)


async def test_the_batch_script_is_loaded_again_after_the_server_forgot_it(tmp_path: Path) -> None:
    # On a Redis of its own: the script cache is flushed, as a restart does
    server = PrivateRedis(tmp_path / "redis", appendonly=False)
    server.start()
    redis = Redis.from_url(server.url)
    try:
        batches = Batches(redis)
        for round_ in range(2):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set("k", round_)
                pipe.eval(APPEND, 2, "list", "pos", "x")
                await batches.execute(pipe)
            (script,) = batches._scripts.values()
            assert (await redis.script_exists(script.sha)) == [True]
            if round_ == 0:
                await redis.script_flush()
                assert (await redis.script_exists(script.sha)) == [False]
        assert await redis.get("k") == b"1"
        assert await redis.lrange("list", 0, -1) == [b"x", b"x"]
    finally:
        await redis.aclose()
        server.stop()
