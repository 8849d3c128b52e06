"""Delayed tasks (``delay=`` / ``eta=``, ``hive submit --delay/--at``): stored at once as ``scheduled``, run when
due and not before, exactly once, with their priority; cancellable; bad values refused with nothing stored."""

from __future__ import annotations

import json
import math
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, TaskSpec, TaskStatus
from hive_framework.backlog import read_backlog
from hive_framework.broker.specs import due_time
from hive_framework.cli import cli
from hive_framework.durations import parse_duration
from hive_framework.errors import InvalidTask
from hive_framework.hive import Hive
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, open_gate, order_list, wait_for_nodes, wait_for_order_length

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


async def stored_task_keys(hive: Hive) -> list[bytes]:
    return [k async for k in hive.broker.redis.scan_iter(match=f"{hive.config.key_prefix}:task:*", count=1000)]


async def finished(hive: Hive, task_id: str, timeout: float = 20.0) -> Any:
    return await hive.wait(task_id, timeout=timeout)


# --- parsing and validation (no spore) ----------------------------------------------------------------------


@given(st.one_of(st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_any_delay_parses_to_seconds_not_negative_or_is_a_value_error_naming_it(value: Any) -> None:
    try:
        seconds = parse_duration(value, what="delay")
    except ValueError as exc:
        assert str(exc).startswith(f"bad delay {value!r}")
    else:
        assert math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1.5h", 5400),
                                               ("2 minutes", 120), ("0", 0), (0.25, 0.25), (7, 7)])
def test_delays_parse(text: Any, seconds: float) -> None:
    assert parse_duration(text, what="delay") == seconds


@pytest.mark.parametrize(("delay", "eta", "says"), [
    (-1, None, "must not be negative"),
    ("-5s", None, "must not be negative"),
    ("soon", None, "bad delay 'soon'"),
    (float("nan"), None, "bad delay"),
    (True, None, "bad delay True"),
    ("100000d", None, "at most"),
    (None, datetime(2030, 1, 1, 9, 0), "no time zone"),
    (None, "2030-01-01T09:00:00", "no time zone"),
    (None, "next tuesday", "ISO 8601"),
    (None, 1700000000, "timezone-aware datetime"),
    (5, datetime(2030, 1, 1, tzinfo=UTC), "not both"),
])
async def test_bad_delay_or_eta_is_refused_by_name_and_stores_nothing(
    hive: Hive, delay: Any, eta: Any, says: str
) -> None:
    with pytest.raises(InvalidTask, match=says):
        await hive.submit("echo", {}, delay=delay, eta=eta)
    with pytest.raises(InvalidTask, match=says):
        await hive.submit_many([TaskSpec(task_type="echo"), TaskSpec(task_type="echo", delay=delay, eta=eta)])
    assert await stored_task_keys(hive) == []
    assert (await hive.queue_stats())["tasks_scheduled"] == 0


def test_due_time_of_a_delay_an_eta_and_a_past_eta() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert due_time("90s", None, now) == now + timedelta(seconds=90)
    assert due_time(0, None, now) is None
    assert due_time(None, None, now) is None
    paris = datetime(2030, 1, 1, 14, 0, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert due_time(None, paris, now) == datetime(2030, 1, 1, 14, 0, tzinfo=UTC)
    assert due_time(None, "2030-01-01T13:00:00+01:00", now) == now
    past = now - timedelta(hours=1)
    assert due_time(None, past, now) == past  # due at once


# --- stored at once, shown as scheduled --------------------------------------------------------------------


async def test_a_delayed_task_is_stored_at_once_as_scheduled_with_its_due_time(hive: Hive) -> None:
    before = datetime.now(UTC)
    task_id = await hive.submit("echo", {"n": 1}, delay="30s")
    message = await hive.status(task_id)
    assert message is not None and message.status == TaskStatus.SCHEDULED
    assert message.eta is not None
    assert before + timedelta(seconds=30) <= message.eta <= datetime.now(UTC) + timedelta(seconds=30)
    stats = await hive.queue_stats()
    assert (stats["tasks_scheduled"], stats["tasks_pending"]) == (1, 0)
    assert (stats["high_priority_queue"], stats["background_queue"]) == (0, 0)
    assert (await read_backlog(hive.broker)).total == 0, "a task not due is no backlog"


async def test_a_delayed_task_due_and_not_taken_counts_as_backlog_from_its_due_time(hive: Hive) -> None:
    # No spore runs: a task whose due time has come waits for one (an autoscaler must start one).
    task_id = await hive.submit("echo", {}, delay=0.2)

    async def due_backlog() -> Any:
        backlog = await read_backlog(hive.broker)
        return backlog if backlog.total == 1 else None

    backlog = await async_wait_until(due_backlog, timeout=10, what="the delayed task to become due")
    assert backlog.by_type == {"echo": 1}
    message = await hive.status(task_id)
    assert message is not None and message.status == TaskStatus.SCHEDULED


async def test_an_eta_in_the_past_queues_the_task_at_once(hive: Hive) -> None:
    task_id = await hive.submit("echo", {}, eta=datetime.now(UTC) - timedelta(minutes=5))
    message = await hive.status(task_id)
    assert message is not None and message.status == TaskStatus.PENDING
    assert (await hive.queue_stats())["background_queue"] == 1


# --- run when due, not before, exactly once ----------------------------------------------------------------


async def test_a_delayed_task_runs_after_its_time_and_not_before(hive: Hive, spore_processes: Any) -> None:
    spore_processes("delay-a", apps=(BASIC,))
    await wait_for_nodes(hive, ["delay-a"])
    task_id = await hive.submit("nap", {"seconds": 0}, delay=1.0)
    queued = await hive.status(task_id)
    assert queued is not None and queued.status == TaskStatus.SCHEDULED and queued.eta is not None
    done = await finished(hive, task_id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.started_at is not None and done.started_at >= queued.eta
    assert done.result["starts"] == 1 and done.attempt == 1


async def test_cancelled_before_it_is_due_it_never_runs(hive: Hive, spore_processes: Any) -> None:
    spore_processes("delay-c", apps=(BASIC,))
    await wait_for_nodes(hive, ["delay-c"])
    doomed = await hive.submit("record", {"label": "doomed"}, delay=1.0)
    assert await hive.cancel(doomed)
    assert await hive.broker.redis.zcard(hive.broker.engine.delayed) == 0, "cancel takes it off the schedule"
    # A task due after the cancelled one's time: once it ran, the cancelled one's moment has passed too.
    witness = await hive.submit("record", {"label": "witness"}, delay=1.5)
    assert (await finished(hive, witness)).status == TaskStatus.COMPLETED
    assert await order_list(hive) == ["witness"]
    message = await hive.status(doomed)
    assert message is not None and message.status == TaskStatus.CANCELLED and message.started_at is None


async def test_delayed_tasks_keep_their_priority(hive: Hive, spore_processes: Any) -> None:
    # One slot, held by a gated task until every delayed task is due and queued: then the freed slot takes
    # them by priority, whatever order they were submitted in.
    spore_processes("delay-p", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["delay-p"])
    await hive.submit("gated", {"label": "blocker", "gate": "g"})
    await wait_for_order_length(hive, 1)
    eta = datetime.now(UTC) + timedelta(seconds=1)
    levels = [0, 7, 3, 10]
    ids = await hive.submit_many(
        [TaskSpec(task_type="record", payload={"label": f"p{level}"}, priority=level, eta=eta) for level in levels]
    )

    async def all_queued() -> bool:
        stats = await hive.queue_stats()
        return stats["high_priority_queue"] + stats["background_queue"] == 1 + len(levels)

    await async_wait_until(all_queued, timeout=15, what="the delayed tasks to reach their queues")
    await open_gate(hive, "g")
    started = await wait_for_order_length(hive, 1 + len(levels))
    assert started == ["blocker", "p10", "p7", "p3", "p0"]
    for task_id in ids:
        assert (await finished(hive, task_id)).status == TaskStatus.COMPLETED


@pytest.mark.slow
async def test_fifty_tasks_due_together_on_two_spores_each_run_exactly_once(
    hive: Hive, spore_processes: Any
) -> None:
    names = ("delay-x", "delay-y")
    for name in names:
        spore_processes(name, apps=(BASIC,), concurrency=8)
    await wait_for_nodes(hive, names)
    eta = datetime.now(UTC) + timedelta(seconds=1)
    ids = await hive.submit_many(
        [TaskSpec(task_type="nap", payload={"seconds": 0.05}, eta=eta) for _ in range(50)]
    )
    done = [await finished(hive, task_id, timeout=60) for task_id in ids]
    assert {m.status for m in done} == {TaskStatus.COMPLETED}
    assert [m.result["starts"] for m in done] == [1] * 50
    assert all(m.started_at is not None and m.started_at >= eta for m in done)
    assert {m.result["node"] for m in done} <= set(names)
    assert await hive.broker.redis.zcard(hive.broker.engine.delayed) == 0


async def test_a_job_delivered_before_it_is_due_waits_and_runs_once(hive: Hive, spore_processes: Any) -> None:
    # A spore whose clock runs ahead would move a delayed job early: here the job is put on its queue by hand
    # at once, besides its place on the schedule. The spore must hand it back, run it once when it is due.
    spore = spore_processes("delay-e", apps=(BASIC,))
    await wait_for_nodes(hive, ["delay-e"])
    task_id = await hive.submit("nap", {"seconds": 0}, delay=1.5)
    message = await hive.status(task_id)
    assert message is not None and message.eta is not None
    async with hive.broker.redis.pipeline(transaction=True) as pipe:
        hive.broker.engine.enqueue_ops(pipe, message)
        await pipe.execute()
    done = await finished(hive, task_id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.started_at is not None and done.started_at >= message.eta
    assert (done.result["starts"], done.attempt) == (1, 1)
    assert "before it is due; its job waits until then" in spore.log()


async def test_a_delayed_task_waits_for_its_dependency_and_for_its_time(hive: Hive, spore_processes: Any) -> None:
    spore_processes("delay-d", apps=(BASIC,))
    await wait_for_nodes(hive, ["delay-d"])
    first = await hive.submit("record", {"label": "first"})
    then = await hive.submit("record", {"label": "then"}, depends_on=[first], delay=1.0)
    done = await finished(hive, then)
    assert done.status == TaskStatus.COMPLETED
    assert done.started_at is not None and done.eta is not None and done.started_at >= done.eta
    assert await order_list(hive) == ["first", "then"]


# --- the command line --------------------------------------------------------------------------------------


def run_cli(config: HiveConfig, *args: str) -> Result:
    """``hive ARGS`` in-process with only ``config``'s settings (and the basic test app)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("HIVE_", "REDIS_"))}
    env.update(config.to_env())
    env["HIVE_APP"] = BASIC
    return CliRunner().invoke(cli, list(args), env=env)


def test_cli_submit_delay_and_at_store_scheduled_tasks_hive_task_shows_when(hive_config: HiveConfig) -> None:
    start = time.time()
    submitted = run_cli(hive_config, "submit", "echo", "--delay", "5m")
    assert submitted.exit_code == 0, submitted.output
    shown = run_cli(hive_config, "task", submitted.stdout.strip())
    assert shown.exit_code == 0, shown.output
    task = json.loads(shown.stdout)
    assert task["status"] == "scheduled"
    assert start + 300 <= datetime.fromisoformat(task["eta"]).timestamp() <= time.time() + 300

    at = run_cli(hive_config, "submit", "echo", "--at", "2030-01-31T10:00:00+01:00")
    assert at.exit_code == 0, at.output
    task = json.loads(run_cli(hive_config, "task", at.stdout.strip()).stdout)
    assert task["status"] == "scheduled"
    assert datetime.fromisoformat(task["eta"]) == datetime(2030, 1, 31, 9, 0, tzinfo=UTC)

    counts = json.loads(run_cli(hive_config, "queues").stdout)
    assert (counts["tasks_scheduled"], counts["tasks_pending"]) == (2, 0)


@pytest.mark.parametrize(("args", "says", "code"), [
    (["--delay", "-30s"], "--delay: bad delay '-30s': it must not be negative", 1),
    (["--delay", "later"], "--delay: bad delay 'later'", 1),
    (["--at", "2030-01-31T10:00:00"], "--at: bad eta '2030-01-31T10:00:00': it has no time zone", 1),
    (["--at", "tomorrow"], "ISO 8601", 1),
    (["--delay", "5", "--at", "2030-01-31T10:00:00+00:00"], "give --delay or --at, not both", 2),
])
def test_cli_refuses_bad_delay_or_at_by_name_and_submits_nothing(
    hive_config: HiveConfig, args: list[str], says: str, code: int
) -> None:
    result = run_cli(hive_config, "submit", "echo", *args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert says in lines[-1] and "Traceback" not in result.output
    counts = json.loads(run_cli(hive_config, "queues").stdout)
    assert counts["tasks_scheduled"] + counts["tasks_pending"] == 0
