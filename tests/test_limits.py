"""Per-type limits: ``@task(rate=..., burst=..., concurrency=...)`` and ``[limits.NAME]`` in ``hive.toml``.

A rate is shared by every spore of the hive (a GCRA bucket in Redis); a concurrency cap holds per spore, and the
spore's other slots keep serving other types meanwhile. Run on both engines (``HIVE_TEST_BROKER``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from hive_framework import HiveConfig, Kernel, TaskStatus, task
from hive_framework.errors import ConfigError
from hive_framework.hive import Hive
from hive_framework.limits import Buckets, Rate, TypeLimit, TypeLimits, limit_from_table, limits_of

from .integration_helpers import wait_for_nodes
from .private_redis import PrivateRedis

LIMITED = "tests.apps.limited"


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[LIMITED])


async def starts(hive: Hive, name: str) -> list[dict[str, Any]]:
    raw = await hive.broker.redis.lrange(f"{hive.config.key_prefix}:test:{name}:starts", 0, -1)
    return [json.loads(r) for r in raw]


async def all_done(hive: Hive, ids: list[str], timeout: float = 60.0) -> None:
    for task_id in ids:
        done = await hive.wait(task_id, timeout=timeout)
        assert done.status == TaskStatus.COMPLETED, done.error


# --- declarations and settings (no Redis) ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "per_second"), [("100/m", 100 / 60), ("10/s", 10), ("5/h", 5 / 3600),
                                                  ("1/30s", 1 / 30), ("2.5/min", 2.5 / 60), (" 3 / 2 sec ", 1.5)])
def test_rates_parse(text: str, per_second: float) -> None:
    rate = Rate.parse(text)
    assert math.isclose(rate.count / rate.period, per_second)
    assert math.isclose(rate.interval_ms, 1000 / per_second)


@given(st.one_of(st.text(max_size=24), st.integers(), st.floats(), st.none()), st.integers(-3, 5))
def test_any_rate_text_parses_or_is_a_value_error_naming_it(text: Any, burst: int) -> None:
    try:
        rate = Rate.parse(text, burst)
    except ValueError as exc:
        assert "rate" in str(exc) or "burst" in str(exc)
    else:
        assert rate.interval_ms > 0 and math.isfinite(rate.interval_ms) and rate.burst >= 1


@pytest.mark.parametrize(("options", "says"), [
    ({"rate": "fast"}, "bad rate 'fast'"),
    ({"rate": "0/s"}, "must be > 0"),
    ({"rate": "5/fortnight"}, "units:"),
    ({"rate": "5/s", "burst": 0}, "bad burst 0"),
    ({"burst": 3}, "burst=3 without a rate"),
    ({"concurrency": 0}, "concurrency must be a whole number >= 1"),
    ({"concurrency": True}, "concurrency must be"),
])
def test_a_bad_limit_on_a_task_type_is_refused_where_it_is_declared(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        task("shaky", **options)(lambda payload: None)
    assert "'shaky'" in str(caught.value)


def test_a_limits_table_overrides_the_declaration_key_by_key() -> None:
    declared = TypeLimit(rate=Rate.parse("10/s", 2), concurrency=4)
    assert limit_from_table("t", {"concurrency": 1}, declared) == TypeLimit(rate=Rate.parse("10/s", 2), concurrency=1)
    assert limit_from_table("t", {"burst": 5}, declared).rate == Rate.parse("10/s", 5)
    assert limit_from_table("t", {"rate": "1/m"}, declared).rate == Rate.parse("1/m", 2)


@pytest.mark.parametrize(("table", "says"), [
    ({"rate": "10/s", "speed": 3}, r"\[limits.resize\]: unknown key\(s\) speed"),
    ({"rate": "quick"}, r"\[limits.resize\]: bad rate 'quick'"),
    ({"burst": 2}, r"\[limits.resize\]: burst without a rate"),
    ({"concurrency": -1}, r"\[limits.resize\]: concurrency must be"),
])
def test_a_bad_limits_table_in_hive_toml_names_the_table_and_key(tmp_path: Path, table: dict[str, Any],
                                                                 says: str) -> None:
    path = tmp_path / "hive.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("[hive]\nkey_prefix = 'x'\n\n[limits.resize]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=says):
        HiveConfig.load(toml_file=path, environ={})


def test_limits_of_takes_each_served_types_declaration_under_its_table() -> None:
    @task("a", rate="1/s", concurrency=3)
    def a(payload: dict[str, Any]) -> None: ...

    @task("b")
    def b(payload: dict[str, Any]) -> None: ...

    limits = limits_of({"a": a, "b": b}, {"b": {"concurrency": 2}, "unserved": {"concurrency": 1}})
    assert limits == {"a": TypeLimit(rate=Rate.parse("1/s"), concurrency=3), "b": TypeLimit(concurrency=2)}


async def test_a_type_at_its_cap_or_with_a_dry_bucket_is_blocked() -> None:
    limits = TypeLimits({"c": TypeLimit(concurrency=2), "r": TypeLimit(rate=Rate.parse("1/s")), "f": TypeLimit()})
    assert limits.blocked(["c", "r", "f"]) == set() and limits.room("f") is None
    limits.started("c")
    assert limits.room("c") == 1 and not limits.blocked(["c"])
    limits.started("c")
    assert limits.blocked(["c", "r", "f"]) == {"c"}
    limits.finished("c")
    assert limits.room("c") == 1
    limits.dry("r", 60_000)
    assert limits.blocked(["r"]) == {"r"} and 59 < (limits.next_token_in() or 0) <= 60
    limits.dry("r", 0)
    assert limits.blocked(["r"]) == set() and limits.next_token_in() is None


# --- the bucket (real Redis) ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_the_bucket_gives_its_burst_then_one_token_per_interval(hive: Hive) -> None:
    buckets = Buckets(hive.broker.redis, hive.broker.keys.rate)
    rate = Rate.parse("1/m", burst=3)  # slow enough that no token comes back while the test runs
    assert await buckets.take("t", rate, 5) == (3, pytest.approx(60_000, abs=50))
    assert (await buckets.take("t", rate, 1))[0] == 0
    await buckets.take("t", rate, -2)  # two given back
    assert (await buckets.take("t", rate, 5))[0] == 2
    # Charged past the bucket (tasks already taken): the debt makes later takers wait longer.
    _, wait_ms = await buckets.take("t", rate, 2, force=True)
    assert wait_ms == pytest.approx(180_000, abs=50)
    ttl = await hive.broker.redis.pttl(hive.broker.keys.rate("t"))
    assert 0 < ttl <= 5 * 60_000 + 1


@pytest.mark.redis
async def test_several_rated_types_are_granted_charged_and_given_back_together(hive: Hive) -> None:
    # Given a spore serving two rated types with different bursts, one bucket each
    limits = TypeLimits({"a": TypeLimit(rate=Rate.parse("1/m", burst=2)), "b": TypeLimit(rate=Rate.parse("1/m")),
                         "plain": TypeLimit()}, Buckets(hive.broker.redis, hive.broker.keys.rate))
    # When it asks for 5 of each (one round trip), each bucket gives what it holds
    assert await limits.grant(["a", "b", "plain"], 5) == {"a": 2, "b": 1}
    # And a type granted nothing is then left alone until its next token
    assert await limits.grant(["a", "b"], 5) == {"a": 0, "b": 0}
    assert limits.blocked({"a", "b", "plain"}) == {"a", "b"}
    # Tokens given back are taken again, per type
    await limits.give_back({"a": 1, "b": 1, "plain": 3})
    limits.dry_until.clear()
    assert await limits.grant(["a", "b"], 5) == {"a": 1, "b": 1}
    # A charge past the buckets puts both in debt: each bucket's next free time moves out by what it was charged
    await limits.charge({"a": 1, "b": 2})
    for name in ("a", "b"):  # a: 2 granted + 1 charged; b: 1 granted + 2 charged; a minute per token
        tat_ms = float(await hive.broker.redis.get(hive.broker.keys.rate(name)))
        assert tat_ms - time.time() * 1000 == pytest.approx(180_000, abs=2_000)


# --- spores (real processes) ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_capped_type_never_runs_past_its_cap_and_the_other_slots_keep_serving(
    hive: Hive, spore_processes: Any
) -> None:
    spore_processes("cap-a", apps=(LIMITED,), concurrency=6)
    await wait_for_nodes(hive, ["cap-a"])
    capped = [await hive.submit("capped", {"s": 0.4}) for _ in range(8)]
    free = [await hive.submit("free", {"s": 0.05}) for _ in range(8)]
    await all_done(hive, free)
    # The free tasks did not wait behind the capped ones: those are still running or queued.
    assert sum(1 for s in await starts(hive, "capped")) < 8
    await all_done(hive, capped)
    runs = await starts(hive, "capped")
    assert len(runs) == 8
    assert max(r["here"] for r in runs) == 2  # reached, never passed
    assert max(r["here"] for r in await starts(hive, "free")) > 1


@pytest.mark.redis
async def test_capped_work_spreads_over_spores_instead_of_queueing_on_one(hive: Hive, spore_processes: Any) -> None:
    for name in ("cap-b1", "cap-b2"):
        spore_processes(name, apps=(LIMITED,), concurrency=10)
    await wait_for_nodes(hive, ["cap-b1", "cap-b2"])
    ids = [await hive.submit("capped", {"s": 0.5}) for _ in range(8)]
    await all_done(hive, ids)
    runs = await starts(hive, "capped")
    by_node = {r["node"] for r in runs}
    assert by_node == {"cap-b1", "cap-b2"}, runs
    assert max(r["here"] for r in runs) <= 2 and max(r["hive"] for r in runs) <= 4


@pytest.mark.redis
async def test_a_rate_holds_across_the_hive(hive: Hive, spore_processes: Any) -> None:
    names = ("rate-a", "rate-b")
    for name in names:
        spore_processes(name, apps=(LIMITED,), concurrency=8)
    await wait_for_nodes(hive, list(names))
    ids = [await hive.submit("rated", {}) for _ in range(20)]
    await all_done(hive, ids)
    times = sorted(r["t"] for r in await starts(hive, "rated"))
    assert len(times) == 20
    # 10/s with a burst of 1: 20 starts span at least 1.9 s, less the one task per spore a blocking read may
    # take ahead of its token (charged to the bucket afterwards).
    assert times[-1] - times[0] >= (20 - 1 - len(names)) * 0.1 - 0.02, times
    # Any one second holds at most 10 starts, plus that overdraw.
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 10 + len(names)


@pytest.mark.redis
async def test_a_limits_table_in_hive_toml_overrides_the_declared_cap(
    hive: Hive, spore_processes: Any, tmp_path: Path
) -> None:
    toml = tmp_path / "limits.toml"
    toml.write_text("[limits.capped]\nconcurrency = 1\n")
    spore = spore_processes("cap-t", apps=(LIMITED,), concurrency=6, extra_env={"HIVE_CONFIG": str(toml)})
    await wait_for_nodes(hive, ["cap-t"])
    ids = [await hive.submit("capped", {"s": 0.2}) for _ in range(4)]
    await all_done(hive, ids)
    assert max(r["here"] for r in await starts(hive, "capped")) == 1
    assert "task type capped: at most 1 at once here" in spore.log()


@pytest.mark.redis
async def test_a_task_pinned_past_the_cap_waits_for_its_turn(hive: Hive, run_spore: Any) -> None:
    spore = await run_spore(name="cap-p", concurrency=6)
    await wait_for_nodes(hive, ["cap-p"])
    # Pinned to the spore's own queue: its type is not known until the task is read, so the cap holds in the run.
    ids = [await hive.submit("capped", {"s": 0.2}, node=spore.node_id) for _ in range(5)]
    await all_done(hive, ids)
    runs = await starts(hive, "capped")
    assert len(runs) == 5 and max(r["here"] for r in runs) == 2


async def test_several_buckets_are_taken_after_the_server_forgot_the_script(tmp_path: Path) -> None:
    # On a Redis of its own, whose script cache is flushed as a restart does
    server = PrivateRedis(tmp_path / "redis", appendonly=False)
    server.start()
    redis = Redis.from_url(server.url)
    try:
        buckets = Buckets(redis, lambda name: f"rate:{name}")
        wants = [("a", Rate.parse("1/m", burst=2), 5), ("b", Rate.parse("1/m"), 5)]
        assert [taken for taken, _ in await buckets.take_many(wants)] == [2, 1]
        await redis.script_flush()
        # Then the calls that met NOSCRIPT are made again, once each: nothing taken twice, nothing lost
        assert [taken for taken, _ in await buckets.take_many(wants)] == [0, 0]
        await buckets.take_many([("a", wants[0][1], -1), ("b", wants[1][1], -1)])
        assert [taken for taken, _ in await buckets.take_many(wants)] == [1, 1]
    finally:
        await redis.aclose()
        server.stop()
