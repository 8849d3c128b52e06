"""The local autoscaler: its policy, its MIN:MAX parser, and a burst of 2,000 tasks on real spore processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, MessageBroker, TaskSpec, TaskStatus
from hive_framework.autoscale import (
    AutoscaledCluster,
    Autoscaler,
    ScalePolicy,
    ScaleState,
    default_policy,
    parse_bounds,
)
from hive_framework.backlog import Backlog, QueueBacklog, read_states
from hive_framework.hookspecs import hookimpl
from hive_framework.monitor import Monitor, create_app
from hive_framework.testing import async_wait_until

from .test_monitor_api import samples

APP = "tests.apps.autoscale"
POLICY = ScalePolicy(min_spores=1, max_spores=4, backlog_per_spore=20, max_wait=1.0, cooldown=2.0, interval=0.2)


def state(waiting: int, spores: int, idle: list[float] | None = None, oldest: float = 0.0) -> ScaleState:
    backlog = Backlog(total=waiting, oldest_age=oldest,
                      by_queue={"q": QueueBacklog(waiting, oldest)} if waiting else {})
    idle = idle if idle is not None else [0.0] * spores
    return ScaleState(backlog=backlog, spores=spores, policy=POLICY,
                      idle_for={f"s{i}": s for i, s in enumerate(idle)})


# --- the policy and the parser (no Redis) -----------------------------------------------------------------


def test_default_policy_grows_on_backlog_per_spore_and_on_wait() -> None:
    assert default_policy(state(2000, 1)) == 4  # straight to MAX, not one at a time
    assert default_policy(state(50, 1)) == 3  # ceil(50 / 20)
    assert default_policy(state(20, 1)) == 1  # at the threshold: enough
    assert default_policy(state(5, 1, oldest=1.5)) == 2  # few tasks, but waiting too long
    assert default_policy(state(5, 4, oldest=9.0)) == 4  # never past MAX


def test_default_policy_shrinks_idle_spores_after_the_cooldown() -> None:
    assert default_policy(state(0, 4, idle=[0.0, 1.0, 2.5, 3.0])) == 2
    assert default_policy(state(0, 4, idle=[1.9] * 4)) == 4  # not yet
    assert default_policy(state(0, 3, idle=[5.0] * 3)) == 1  # never under MIN
    assert default_policy(state(3, 3, idle=[5.0] * 3)) == 3  # tasks still wait: keep them


@given(st.integers(0, 50), st.integers(0, 50))
def test_parse_bounds_accepts_min_max(low: int, high: int) -> None:
    text = f"{low}:{high}"
    if low <= high and high >= 1:
        assert parse_bounds(text) == (low, high)
    else:
        with pytest.raises(ValueError):
            parse_bounds(text)


@given(st.text(max_size=20))
def test_parse_bounds_never_fails_otherwise(text: str) -> None:
    try:
        low, high = parse_bounds(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert 0 <= low <= high and high >= 1


def test_a_plugin_replaces_the_policy(hive_config: HiveConfig) -> None:
    class Fixed:
        @hookimpl
        def autoscale_decision(self, state: Any) -> int:
            return 99

    kernel = Kernel(hive_config)
    kernel.pm.register(Fixed())
    answer = kernel.pm.hook.autoscale_decision(state=state(0, 1), config=kernel.config)
    assert answer == 99


# --- real processes ------------------------------------------------------------------------------------


async def _online(broker: Any) -> int:
    return len(await broker.get_nodes())


@pytest.mark.redis
@pytest.mark.slow
async def test_burst_grows_to_max_drains_and_shrinks_to_min(hive_config: HiveConfig,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The spores inherit this process's environment: only the test's settings (another test's --config
    # leaves HIVE_CONFIG behind, as the CLI exports it for the processes it starts).
    for name in list(os.environ):
        if name.startswith(("HIVE_", "REDIS_")):
            monkeypatch.delenv(name)
    config = hive_config.evolve(apps=(APP,))
    env = {**config.to_env(), "HIVE_APP": APP, "PYTHONPATH": os.getcwd()}
    env.pop("REDIS_URL", None)
    cluster = AutoscaledCluster(config, spores=POLICY.min_spores, concurrency=4, apps=(APP,), embedded="never",
                                extra_env=env, quiet=True)
    with cluster:
        scaler = Autoscaler(cluster, POLICY)
        runner = asyncio.create_task(scaler.run())
        try:
            async with MessageBroker(Kernel(config)) as broker:
                # Given MIN spores beating and nothing to do
                await async_wait_until(lambda: _online_is(broker, 1), timeout=30, what="the first spore")
                await asyncio.sleep(POLICY.interval * 3)
                assert len(cluster.spore_procs) == 1 and scaler.decisions["up"] == 0

                # When 2,000 tasks of 50 ms arrive at once
                ids = []
                for start in range(0, 2000, 500):
                    specs = [TaskSpec(task_type="tick", payload={"n": n}) for n in range(start, start + 500)]
                    ids += await broker.enqueue_many(specs)
                burst = time.monotonic()

                # Then the autoscaler asks for MAX within a tick or two, and MAX spores beat soon after
                await async_wait_until(lambda: _true(len(cluster.spore_procs) == POLICY.max_spores),
                                       timeout=POLICY.interval * 10, what="the decision to grow to MAX")
                decided = time.monotonic() - burst
                await async_wait_until(lambda: _online_is(broker, POLICY.max_spores), timeout=30,
                                       what="MAX spores beating")
                beating = time.monotonic() - burst

                # And the backlog drains
                await async_wait_until(lambda: _completed_is(broker, 2000), timeout=180, interval=0.2,
                                       what="all 2,000 tasks completed")
                drained = time.monotonic() - burst

                # And the spores shrink back to MIN after the cool-down
                await async_wait_until(lambda: _online_is(broker, POLICY.min_spores), timeout=POLICY.cooldown + 30,
                                       interval=0.1, what="back to MIN spores")
                assert len(cluster.spore_procs) == POLICY.min_spores
                shrunk = time.monotonic() - burst

                # And no task was lost or run twice
                stats = await broker.get_queue_stats()
                assert stats["tasks_completed"] == 2000 and stats["tasks_failed"] == 0
                runs = await broker.redis.hgetall(f"{config.key_prefix}:test:runs")
                assert len(runs) == 2000 and {int(v) for v in runs.values()} == {1}
                tasks = await broker.get_tasks(ids)
                assert all(t is not None and t.status == TaskStatus.COMPLETED and t.attempt == 1 for t in tasks)

                # And the decisions are in /metrics
                assert scaler.decisions["up"] == POLICY.max_spores - POLICY.min_spores
                assert scaler.decisions["down"] == POLICY.max_spores - POLICY.min_spores
                published = await read_states(broker)
                assert published[scaler.identity]["decisions"] == scaler.decisions
                transport = httpx.ASGITransport(app=create_app(Monitor(broker)))
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                    found = samples((await http.get("/metrics")).text)
                label = (("autoscaler", scaler.identity), ("direction", "down"))
                assert found[("hive_autoscale_decisions_total", label)] == 3
                assert found[("hive_autoscale_spores", (("autoscaler", scaler.identity),))] == 1
                print(f"\nautoscale: MAX decided after {decided:.2f}s, {POLICY.max_spores} spores beating after "
                      f"{beating:.2f}s, 2,000 tasks drained after {drained:.2f}s, back to MIN after {shrunk:.2f}s")
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def _true(value: bool) -> bool:
    return value


async def _online_is(broker: Any, count: int) -> bool:
    return await _online(broker) == count


async def _completed_is(broker: Any, count: int) -> bool:
    return (await broker.get_queue_stats())["tasks_completed"] == count


def idle_scaler(hive_config: HiveConfig, spores: int = 1) -> Autoscaler:
    """An autoscaler (1..2 spores, ticking every 10 ms) over a cluster that never starts a process itself."""
    cluster = AutoscaledCluster(hive_config, spores=spores, concurrency=1, embedded="never", quiet=True)
    cluster.url = hive_config.redis_url
    return Autoscaler(cluster, ScalePolicy(min_spores=1, max_spores=2, interval=0.01))


async def run_inside_a_tick(
    scaler: Autoscaler, body: Callable[[], Awaitable[None]]
) -> tuple[asyncio.Task[None], list[int]]:
    """Start ``scaler.run()`` with each tick replaced by ``body`` (counted); return once the first tick is in it."""
    ticks: list[int] = []
    in_tick = asyncio.Event()

    async def tick(broker: Any) -> int:
        ticks.append(1)
        in_tick.set()
        await body()
        return 1

    scaler.tick = tick  # type: ignore[method-assign]
    runner = asyncio.create_task(scaler.run())
    await asyncio.wait_for(in_tick.wait(), timeout=30)
    return runner, ticks


@pytest.mark.redis
async def test_a_cancel_swallowed_inside_a_tick_still_stops_the_loop(hive_config: HiveConfig) -> None:
    # Given an autoscaler whose tick, like a redis-py read, turns a cancel that lands in it into a normal return
    async def swallowing() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    runner, ticks = await run_inside_a_tick(idle_scaler(hive_config), swallowing)

    # When it is cancelled while that tick runs
    runner.cancel()

    # Then the loop ends with the cancel, and no further tick starts spores
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, timeout=30)
    assert len(ticks) == 1


@pytest.mark.redis
async def test_ctrl_c_stops_the_loop_even_when_a_tick_loses_the_cancel_entirely(hive_config: HiveConfig) -> None:
    # Given an autoscaler whose tick loses a cancel that lands in it without a trace (as a cancel redis-py turned
    # into a read's timeout leaves the task: not cancelling any more)
    async def losing() -> None:
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()

    scaler = idle_scaler(hive_config)
    runner, ticks = await run_inside_a_tick(scaler, losing)

    # When Ctrl-C (`hive up --autoscale`) reaches the process while that tick runs
    os.kill(os.getpid(), signal.SIGINT)

    # Then the loop ends after that tick, and the signal handling is as it was before
    await asyncio.wait_for(runner, timeout=30)
    assert (len(ticks), scaler.stop.is_set()) == (1, True)
    assert signal.getsignal(signal.SIGINT) is not None


@pytest.mark.redis
async def test_a_tick_after_ctrl_c_starts_no_spore(hive_config: HiveConfig) -> None:
    # Given an autoscaler with no spore running under a minimum of one, told to stop
    scaler = idle_scaler(hive_config, spores=0)
    scaler.cluster.spore_procs = {}
    scaler.stop.set()

    # When a tick runs (one that was in progress when Ctrl-C stopped the spores)
    async with MessageBroker(scaler.kernel) as broker:
        want = await scaler.tick(broker)

    # Then it still knows what it would want, but starts nothing
    assert want == 1
    assert scaler.cluster.spore_procs == {} and scaler.decisions == {"up": 0, "down": 0}
