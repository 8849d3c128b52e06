"""Periodic tasks: parsing, the tick arithmetic, the scheduler's claim with a stepped clock on a real Redis,
and two nexus processes firing an every-second schedule across a kill -9 of the leader."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, TaskStatus, task
from hive_framework.errors import ConfigError
from hive_framework.hive import Hive
from hive_framework.monitor import Monitor
from hive_framework.nexus import Watchdog
from hive_framework.schedules import (
    Schedule,
    Scheduler,
    check_cron,
    collect_schedules,
    parse_every,
    schedule_from_table,
    schedule_rows,
)
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC

SCHEDULED = "tests.apps.scheduled"


# --- parsing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1.5h", 5400), ("1d", 86400),
                                               ("2 minutes", 120), ("45", 45), (10, 10)])
def test_intervals_parse(text: Any, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "0.5s", "5 parsecs", "-3m", "nan", "inf", "1e9x", True])
def test_bad_intervals_say_what_to_write(text: Any) -> None:
    with pytest.raises(ValueError, match=r"bad interval .*(number of seconds|at least one second)"):
        parse_every(text)


@given(st.text(max_size=30))
def test_any_interval_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        seconds = parse_every(text)
    except ValueError as exc:
        assert "bad interval" in str(exc)
    else:
        assert math.isfinite(seconds) and seconds >= 1


@given(st.text(max_size=40))
def test_any_cron_text_is_valid_or_a_value_error_naming_it(text: str) -> None:
    try:
        assert check_cron(text) == text
    except ValueError as exc:
        assert str(exc).startswith(f"bad cron expression {text!r}")


def test_a_bad_schedule_fails_where_the_task_type_is_declared() -> None:
    with pytest.raises(ValueError, match=r"task type 'report': bad cron expression '61 \* \* \* \*'"):
        task("report", schedule="61 * * * *")(lambda payload: None)


@pytest.mark.parametrize(("table", "message"), [
    ({"cron": "* * * * *"}, r"\[schedules.nightly\] needs task = \"TYPE\""),
    ({"task": "report", "cron": "* * * * *", "every": "5m"}, "exactly one of cron or every"),
    ({"task": "report"}, "exactly one of cron or every"),
    ({"task": "report", "cron": "* * *"}, "it needs five fields"),
    ({"task": "report", "every": "soon"}, "bad interval 'soon'"),
    ({"task": "report", "every": "5m", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"task": "report", "every": "5m", "payload": [1]}, "payload must be a table"),
    ({"task": "report", "every": "5m", "retries": 3}, "unknown key 'retries' in \\[schedules.nightly\\]"),
])
def test_a_bad_schedules_table_is_one_config_error_naming_it(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schedule_from_table("nightly", table)


def test_hive_toml_schedules_sit_beside_hive(tmp_path: Path) -> None:
    toml = tmp_path / "hive.toml"
    toml.write_text('[hive]\nkey_prefix = "x"\n\n[schedules.nightly]\ntask = "report"\ncron = "0 3 * * *"\n'
                    'tz = "Europe/Warsaw"\npriority = "high_priority"\npayload = { kind = "full" }\n')
    config = HiveConfig.load(environ={}, env_file="/dev/null", toml_file=toml)
    [schedule] = collect_schedules([], config.schedules)
    assert (schedule.name, schedule.task_type, schedule.when, schedule.payload, schedule.options) == (
        "nightly", "report", "0 3 * * * (Europe/Warsaw)", {"kind": "full"}, {"priority": "high_priority"})


# --- ticks ---------------------------------------------------------------------------------------------------


@given(st.floats(min_value=1e9, max_value=4e9), st.sampled_from([1, 2, 7.5, 60, 3600]))
def test_interval_ticks_bracket_now(now: float, every: float) -> None:
    schedule = Schedule(name="s", task_type="t", every=every)
    latest, following = schedule.latest_tick(now), schedule.next_tick(now)
    assert latest <= now < following
    assert following - latest == pytest.approx(every)


@given(st.integers(min_value=1_600_000_000, max_value=2_000_000_000),
       st.sampled_from(["*/5 * * * *", "0 3 * * *", "30 */2 * * 1-5", "0 0 1 * *"]),
       st.sampled_from(["UTC", "Europe/Warsaw", "America/New_York"]))
def test_cron_ticks_bracket_now_and_match_the_expression(now: int, cron: str, tz: str) -> None:
    schedule = Schedule(name="s", task_type="t", cron=cron, tz=tz)
    latest, following = schedule.latest_tick(now), schedule.next_tick(now)
    assert latest <= now < following
    assert schedule.latest_tick(following) == following  # a tick is its own latest tick
    assert datetime.fromtimestamp(latest, UTC).second == 0


# --- the scheduler, stepped by hand on a real Redis ------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


async def leading(hive: Hive) -> Watchdog:
    watchdog = Watchdog(hive.broker, interval=30)
    assert await watchdog.hold_lease()
    return watchdog


@pytest.mark.redis
async def test_each_tick_is_enqueued_once_missed_ones_coalesce_and_a_new_schedule_waits(hive: Hive) -> None:
    watchdog = await leading(hive)
    clock = Clock(1_800_000_000.5)
    every = Schedule(name="ping", task_type="echo", every=10, payload={"n": 1}, options={"priority": "high_priority"})
    scheduler = Scheduler(hive.broker, [every], identity=watchdog.identity, clock=clock)

    # A schedule seen for the first time runs nothing for the tick that already passed
    assert await scheduler.tick() == []
    # The next tick runs once, however often the scheduler looks
    clock.now += 10
    assert await scheduler.tick() == ["schedule:ping:1800000010"]
    assert await scheduler.tick() == []
    message = await hive.status("schedule:ping:1800000010")
    assert message is not None and (message.task_type, message.payload, message.priority) == ("echo", {"n": 1}, 10)
    # Five ticks passed with nobody looking: only the latest runs
    clock.now += 50
    assert await scheduler.tick() == ["schedule:ping:1800000060"]
    # and `hive schedules` reads what ran and what comes next
    await scheduler.publish()
    [row] = await schedule_rows(hive.broker, now=clock.now)
    assert (row["name"], row["when"], row["last_tick"], row["last_task_id"], row["next_tick"]) == (
        "ping", "every 10s", 1800000060.0, "schedule:ping:1800000060", 1800000070.0)
    # and so does the Monitor's snapshot, with ISO times
    [shown] = (await Monitor(hive.broker).snapshot())["schedules"]
    assert (shown["name"], shown["task_type"], shown["last_tick"], shown["last_task_id"]) == (
        "ping", "echo", "2027-01-15T08:01:00+00:00", "schedule:ping:1800000060")


@pytest.mark.redis
async def test_only_the_lease_holder_fires_and_a_new_leader_never_doubles_a_tick(hive: Hive) -> None:
    watchdog = await leading(hive)
    clock = Clock(1_800_000_000.5)
    every = Schedule(name="ping", task_type="echo", every=10)
    leader = Scheduler(hive.broker, [every], identity=watchdog.identity, clock=clock)
    standby = Scheduler(hive.broker, [every], identity="standby", clock=clock)
    await leader.tick()
    clock.now += 10

    # A scheduler without the lease fires nothing
    assert await standby.tick() == []
    assert await leader.tick() == ["schedule:ping:1800000010"]

    # When the lease passes to the standby at the same tick, it does not run that tick again
    await watchdog.release_lease()
    assert await hive.broker.redis.set(hive.broker.keys.nexus_leader, "standby")
    assert await standby.tick() == []
    # and a claim lost between claiming and enqueueing (the old leader died) is not doubled either:
    # the tick's task id already exists, so the enqueue is refused and nothing new is made
    await hive.broker.redis.hset(hive.broker.keys.schedule_ticks, "ping", "1800000000")
    assert await standby.tick() == []
    assert (await hive.broker.redis.hget(hive.broker.keys.schedule_ticks, "ping")) == b"1800000010"
    clock.now += 10
    assert await standby.tick() == ["schedule:ping:1800000020"]
    assert await leader.tick() == []


# --- real processes ----------------------------------------------------------------------------------------------


def fired_ticks(log: str) -> list[int]:
    return [int(t) for t in re.findall(r"schedule beat fired schedule:beat:(\d+)", log)]


@pytest.mark.redis
@pytest.mark.slow
async def test_two_nexus_processes_fire_each_second_once_across_a_kill_9_of_the_leader(
    hive: Hive, spore_processes: Any, nexus_processes: Any
) -> None:
    # Given a spore serving `beat` (every second) and two nexus processes loading it, the lease short
    spore_processes("runner", apps=(SCHEDULED,), concurrency=4)
    env = {"HIVE_WATCHDOG_INTERVAL": "0.3"}
    nexuses = [nexus_processes(name, apps=(SCHEDULED,), extra_env=env) for name in ("n1", "n2")]
    redis, keys = hive.broker.redis, hive.broker.keys
    beats = f"{hive.config.key_prefix}:test:beats"

    async def runs() -> list[str]:
        return [r.decode() for r in await redis.lrange(beats, 0, -1)]

    await async_wait_until(lambda: _at_least(runs, 3), timeout=30, what="three ticks to run")

    # When the leading nexus is killed with SIGKILL
    holder = (await redis.get(keys.nexus_leader)).decode()
    leader = next(n for n in nexuses if f":{n.pid}:" in holder)
    survivor = next(n for n in nexuses if n is not leader)
    leader.kill()
    before = len(await runs())

    # Then the survivor takes over and goes on firing
    await async_wait_until(lambda: _at_least(runs, before + 4), timeout=30, what="four more ticks after the kill")
    assert fired_ticks(survivor.log()), survivor.log()

    # and no tick ran twice, each tick's task ran once, and at most one tick was skipped in the hand-over
    ran = await runs()
    assert [task_id for task_id, n in Counter(ran).items() if n > 1] == []
    ticks = sorted(int(t.rsplit(":", 1)[1]) for t in ran)
    gaps = Counter(b - a for a, b in pairwise(ticks))
    assert set(gaps) <= {1, 2} and gaps[2] <= 1, (gaps, ticks)
    done = await hive.broker.get_tasks(ran)
    assert {t.status for t in done if t is not None} <= {TaskStatus.COMPLETED, TaskStatus.RUNNING}


async def _at_least(runs: Any, count: int) -> bool:
    return len(await runs()) >= count
