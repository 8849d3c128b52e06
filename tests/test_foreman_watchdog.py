"""The watchdog's moves, in process on a real Redis: each zombie retried exactly once however many nexus
processes race, parked tasks placed or failed after their timeout, and work queued for lost nodes re-routed;
and ForemanAgent.assign_task really dispatching to the node it picks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from hive_framework import ForemanAgent, HiveConfig, Kernel, TaskMessage, TaskStatus
from hive_framework.hive import Hive
from hive_framework.nexus import Watchdog
from hive_framework.testing import async_wait_until

from .foreman_helpers import arq_keys, beat, drop_jobs, isolated_namespace, make_zombies, stop_cleanly
from .integration_helpers import BASIC, assert_stays, open_gate, wait_for_nodes

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """A private namespace on the test Redis, without entry-point plugins, on the ARQ broker (see foreman_helpers)."""
    yield from isolated_namespace(hive_redis_url, arq=True)


@pytest.fixture
def hive_kernel(hive_config):
    """The client knows the test task types (echo, nap, gated...)."""
    return Kernel(hive_config, apps=[BASIC])


async def test_concurrent_requeues_of_one_zombie_change_it_exactly_once(hive: Hive) -> None:
    # Given a task running on a node that never beats
    (task_id,) = await make_zombies(hive, 1)
    (zombie,) = await hive.broker.detect_zombie_tasks()
    old_job = zombie.engine_job_id
    try:
        # When twenty callers (nexus processes in a hand-over) requeue it at once
        outcomes = await asyncio.gather(*(hive.broker.requeue_zombie(zombie, "test") for _ in range(20)))

        # Then exactly one changed it: pending again under one fresh engine job, the old job gone
        assert outcomes.count("pending") == 1 and outcomes.count(None) == 19
        after = await hive.status(task_id)
        assert after.status == TaskStatus.PENDING and after.engine_job_id != old_job
        assert after.attempt == 1 and after.error == "zombie: test"
        assert not await hive.broker.redis.exists(arq_keys(hive).in_progress(old_job), arq_keys(hive).job(old_job))
        shared = hive.broker.engine.queue_for(0, None, "nap")
        assert await hive.broker.redis.zscore(shared, after.engine_job_id) is not None
        assert await hive.broker.redis.zscore(shared, old_job) is None
        # and it is no zombie any more
        assert await hive.broker.detect_zombie_tasks() == []
    finally:
        await drop_jobs(hive, [task_id])
        await hive.cancel(task_id)


async def test_two_watchdogs_both_believing_they_lead_retry_each_zombie_once(hive: Hive) -> None:
    # Given ten zombies and two watchdogs whose leases both say "leader" (the worst hand-over)
    ids = await make_zombies(hive, 10)
    dogs = [Watchdog(hive.broker, interval=0.1), Watchdog(hive.broker, interval=0.1)]

    async def always_leader() -> bool:
        return True

    for dog in dogs:
        dog.hold_lease = always_leader  # type: ignore[method-assign]
    try:
        # When both sweep at the same time, twice
        for _ in range(2):
            await asyncio.gather(*(dog.sweep() for dog in dogs))

        # Then the ten were requeued ten times in all, and each task got exactly one fresh engine job
        assert sum(dog.stats["zombies_requeued"] for dog in dogs) == 10
        for message in await hive.broker.get_tasks(ids):
            assert message.status == TaskStatus.PENDING
            assert message.engine_job_id.startswith(f"{message.task_id}.z")
            assert message.error == "zombie: node ghost stopped beating"
    finally:
        await drop_jobs(hive, ids)
        for task_id in ids:
            await hive.cancel(task_id)


async def test_only_the_lease_holder_sweeps(hive: Hive) -> None:
    # Given two watchdogs on one hive, and zombies
    ids = await make_zombies(hive, 3)
    first, second = Watchdog(hive.broker, interval=5), Watchdog(hive.broker, interval=5)
    try:
        # When both sweep, Then only the first to take the lease acts, and it stays leader on renewal
        assert await first.sweep() == {"zombies_requeued": 3}
        assert await second.sweep() == {}
        assert (first.is_leader, second.is_leader) == (True, False)
        assert await first.hold_lease() is True
        # and once the leader lets go, the other takes over
        await first.release_lease()
        assert await second.hold_lease() is True
    finally:
        await drop_jobs(hive, ids)
        for task_id in ids:
            await hive.cancel(task_id)


async def test_a_zombie_out_of_retries_fails_into_the_dead_letters(hive: Hive) -> None:
    # Given a zombie already on its last attempt (nap allows 2 retries: 3 attempts)
    (task_id,) = await make_zombies(hive, 1)
    message = await hive.status(task_id)
    message.attempt = 3
    await hive.broker.save_task(message)
    (zombie,) = await hive.broker.detect_zombie_tasks()
    # When it is requeued, Then it fails for good, saying why, and is a dead letter
    assert await hive.broker.requeue_zombie(zombie, "node ghost stopped beating") == "failed"
    failed = await hive.status(task_id)
    assert failed.status == TaskStatus.FAILED
    assert "no retries left after 3 attempts" in failed.error
    assert [m.task_id for m in await hive.broker.dead_letters()] == [task_id]


async def test_a_parked_task_is_placed_when_a_fitting_node_appears_or_fails_after_its_timeout(hive: Hive) -> None:
    # Given no GPU node online, two GPU tasks: one patient (30 s), one not (1 s)
    await beat(hive, "cpu-only", gpu=False)
    patient = await hive.submit("echo", {}, requirements={"gpu": True}, timeout=30)
    hasty = await hive.submit("echo", {}, requirements={"gpu": True}, timeout=1)
    for task_id in (patient, hasty):
        parked = await hive.status(task_id)
        # Then both wait, saying what for, on no queue
        assert parked.status == TaskStatus.WAITING
        assert parked.queue == "" and parked.assigned_node is None
        assert "{'gpu': True}" in parked.reason
    assert await hive.broker.redis.zcard(hive.broker.keys.unrouted) == 2

    # When a watchdog sweeps after the short timeout has passed, still with no GPU node
    counts = await hive.broker.reroute_stranded(now=time.time() + 2)
    # Then the hasty one failed, saying why, and the patient one still waits
    assert counts == {"placed": 0, "expired": 1, "rerouted": 0}
    expired = await hive.status(hasty)
    assert expired.status == TaskStatus.FAILED
    assert "no online node met {'gpu': True} within 1s" in expired.error
    assert [m.task_id for m in await hive.broker.dead_letters()] == [hasty]
    assert (await hive.status(patient)).status == TaskStatus.WAITING

    # When a GPU node comes online and the watchdog sweeps again
    await beat(hive, "gpu-box", gpu=True)
    counts = await hive.broker.reroute_stranded()

    # Then the patient task goes to the GPU node's own queue
    assert counts == {"placed": 1, "expired": 0, "rerouted": 0}
    placed = await hive.status(patient)
    assert (placed.status, placed.assigned_node, placed.reason) == (TaskStatus.PENDING, "gpu-box", None)
    assert placed.queue == hive.broker.keys.node_queue("gpu-box")
    assert await hive.broker.redis.zcard(hive.broker.keys.unrouted) == 0
    await hive.cancel(patient)


async def test_a_balancer_failing_on_one_parked_task_leaves_it_parked_and_places_the_others(
    hive: Hive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two parked GPU tasks, then a GPU node, and a balancer that fails on one of them
    await beat(hive, "cpu-only", gpu=False)
    broken = await hive.submit("echo", {"n": 1}, requirements={"gpu": True}, timeout=30)
    fine = await hive.submit("echo", {"n": 2}, requirements={"gpu": True}, timeout=30)
    await beat(hive, "gpu-box", gpu=True)
    route = hive.broker.kernel.route

    def flaky_route(task: TaskMessage, nodes: Any) -> str | None:
        if task.task_id == broken:
            raise RuntimeError("the balancer fails on this task")
        return route(task, nodes)

    monkeypatch.setattr(hive.broker.kernel, "route", flaky_route)
    # When the watchdog sweeps
    counts = await hive.broker.reroute_stranded()
    # Then the other task is placed, and the one the balancer failed on still waits, parked
    assert counts == {"placed": 1, "expired": 0, "rerouted": 0}
    assert (await hive.status(fine)).assigned_node == "gpu-box"
    assert (await hive.status(broken)).status == TaskStatus.WAITING
    assert await hive.broker.redis.zscore(hive.broker.keys.unrouted, broken) is not None
    await hive.cancel(fine)
    await hive.cancel(broken)


@pytest.mark.parametrize(
    ("how", "explicit_id"), [("crashed", None), ("stopped cleanly", None), ("crashed", "batch.7.item")]
)
async def test_tasks_queued_for_a_lost_node_are_rerouted_to_a_fitting_one(
    hive: Hive, how: str, explicit_id: str | None
) -> None:
    # Given a GPU task (its id may contain dots) routed to gpu-a's own queue
    await beat(hive, "gpu-a", gpu=True)
    task_id = await hive.submit("echo", {}, requirements={"gpu": True}, task_id=explicit_id)
    routed = await hive.status(task_id)
    assert routed.assigned_node == "gpu-a"
    # When gpu-a goes away before starting it (crash: heartbeat expired; clean stop: deregistered),
    # and another GPU node is online
    if how == "crashed":
        await beat(hive, "gpu-a", online=False, gpu=True)
    else:
        await stop_cleanly(hive, "gpu-a")
    await beat(hive, "gpu-b", gpu=True)
    counts = await hive.broker.reroute_stranded()

    # Then the task moved to gpu-b's queue under a fresh engine job, and gpu-a's queue is empty
    assert counts["rerouted"] == 1
    moved = await hive.status(task_id)
    assert (moved.status, moved.assigned_node) == (TaskStatus.PENDING, "gpu-b")
    assert moved.engine_job_id != routed.engine_job_id
    assert await hive.broker.redis.zcard(hive.broker.keys.node_queue("gpu-a")) == 0
    assert await hive.broker.redis.zscore(hive.broker.keys.node_queue("gpu-b"), moved.engine_job_id) is not None
    await hive.cancel(task_id)


async def test_the_queue_of_a_lost_node_is_read_in_one_round_trip_per_chunk(
    hive: Hive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given eight GPU tasks (some ids with dots) routed to gpu-a's queue, and gpu-a lost with gpu-b online
    await beat(hive, "gpu-a", gpu=True)
    ids = [await hive.submit("echo", {}, requirements={"gpu": True}, task_id=f"lost.{i}" if i % 2 else None)
           for i in range(8)]
    await beat(hive, "gpu-a", online=False, gpu=True)
    await beat(hive, "gpu-b", gpu=True)
    reads: list[list[str]] = []
    get_tasks = hive.broker.get_tasks

    async def counted(task_ids: list[str], *args: Any, **kwargs: Any) -> Any:
        reads.append(list(task_ids))
        return await get_tasks(task_ids, *args, **kwargs)

    monkeypatch.setattr(hive.broker, "get_tasks", counted)

    # When the watchdog sweeps
    counts = await hive.broker.reroute_stranded()

    # Then every task moved to gpu-b, and their records were read together, not one round trip each
    assert counts["rerouted"] == 8
    assert [read for read in reads if set(ids) & set(read)] == [reads[-1]]
    assert set(ids) <= set(reads[-1])
    for task_id in ids:
        moved = await hive.status(task_id)
        assert (moved.status, moved.assigned_node) == (TaskStatus.PENDING, "gpu-b")
        await hive.cancel(task_id)


async def test_a_task_pinned_to_a_node_not_up_yet_stays_for_it(hive: Hive) -> None:
    # Given a task pinned to a node that has never beaten, and another node online
    await beat(hive, "elsewhere")
    task_id = await hive.submit("echo", {}, node="later")
    # When the watchdog sweeps, Then the pin holds: the task waits in that node's queue
    assert (await hive.broker.reroute_stranded())["rerouted"] == 0
    kept = await hive.status(task_id)
    assert (kept.status, kept.assigned_node, kept.queue) == (
        TaskStatus.PENDING, "later", hive.broker.keys.node_queue("later")
    )
    await hive.cancel(task_id)


async def test_assign_task_moves_a_queued_task_to_the_chosen_node_and_only_it_runs_it(
    hive: Hive, hive_kernel: Kernel, run_spore
) -> None:
    # Given two one-slot spores, only "special" tagged so, each busy with a gated task
    await run_spore(name="plain", concurrency=1)
    await run_spore(name="special", concurrency=1, capabilities={"tags": ["special"]})
    await wait_for_nodes(hive, ["plain", "special"])
    gated = [await hive.submit("gated", {"label": f"g{i}", "gate": f"g{i}"}) for i in range(2)]

    async def both_busy() -> dict[str, str] | None:
        found = {m.assigned_node: m.payload["gate"] for m in await hive.broker.get_tasks(gated)
                 if m.status == TaskStatus.RUNNING}
        return found if len(found) == 2 else None

    gate_of = await async_wait_until(both_busy, what="both spores to run a gated task")
    # and an echo task on the shared queue, which neither can take yet
    task_id = await hive.submit("echo", {"who": "anyone"})
    foreman = ForemanAgent(hive_kernel, hive.broker, None)

    # When Foreman assigns it to the best node tagged "special"
    chosen = await foreman.assign_task(task_id, {"tags": ["special"]})

    # Then it is on that node's own queue, off the shared one
    assert chosen == "special"
    moved = await hive.status(task_id)
    assert (moved.status, moved.assigned_node) == (TaskStatus.PENDING, "special")
    assert moved.queue == hive.broker.keys.node_queue("special")
    assert moved.requirements == {"tags": ["special"]}
    assert await hive.broker.redis.zscore(hive.broker.engine.queue_for(0, None, "echo"), moved.engine_job_id) is None
    # and when the other spore frees its slot first, it does not take the task
    await open_gate(hive, gate_of["plain"])
    plain_task = next(m.task_id for m in await hive.broker.get_tasks(gated) if m.assigned_node == "plain")
    assert (await hive.wait(plain_task, timeout=10)).status == TaskStatus.COMPLETED

    async def still_pending() -> bool:
        return (await hive.status(task_id)).status == TaskStatus.PENDING

    await assert_stays(still_pending, 0.5, "the idle plain spore must not take a task assigned to special")
    # and the chosen spore runs it once free
    await open_gate(hive, gate_of["special"])
    done = await hive.wait(task_id, timeout=10)
    assert done.status == TaskStatus.COMPLETED and done.result["node"] == "special"
    # and assigning a task that already finished is refused
    assert await foreman.assign_task(task_id) is None


async def test_assign_task_with_no_fitting_node_leaves_the_task_alone(hive: Hive) -> None:
    # Given only a CPU node online and a queued task
    await beat(hive, "cpu-only", gpu=False)
    task_id = await hive.submit("echo", {})
    foreman = ForemanAgent(hive.broker)
    # When Foreman is asked to assign it to a GPU node, Then it answers None and the task stays queued
    assert await foreman.assign_task(task_id, {"gpu": True}) is None
    left = await hive.status(task_id)
    shared = hive.broker.engine.queue_for(0, None, "echo")
    assert (left.status, left.queue, left.assigned_node) == (TaskStatus.PENDING, shared, None)
    await hive.cancel(task_id)


async def test_assign_task_refuses_a_task_a_spore_has_already_taken(hive: Hive) -> None:
    # Given a pending task whose engine job a spore has just leased (not yet recorded as running)
    await beat(hive, "other")
    task_id = await hive.submit("echo", {})
    message: TaskMessage = await hive.status(task_id)
    await hive.broker.redis.psetex(arq_keys(hive).in_progress(message.engine_job_id), 10_000, b"1")
    try:
        # When Foreman tries to move it, Then it is refused and the task stays where it was taken from
        assert await ForemanAgent(hive.broker).assign_task(task_id) is None
        left = await hive.status(task_id)
        assert (left.queue, left.assigned_node) == (hive.broker.engine.queue_for(0, None, "echo"), None)
    finally:
        await hive.broker.redis.delete(arq_keys(hive).in_progress(message.engine_job_id))
        await hive.cancel(task_id)


def _first_transaction(hive: Hive, monkeypatch: pytest.MonkeyPatch, fault: str, task_id: str) -> list[str]:
    """Make the broker's next WATCH transaction fail once as redis-py fails it: ``"get"`` loses the connection
    after WATCH (redis-py raises WatchError from the read, on a ConnectionError), ``"exec"`` rewrites the
    watched task record with its own bytes before EXEC (which refuses). Returns the faults that fired."""
    redis = hive.broker.redis
    real = redis.pipeline
    fired: list[str] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        if fired:
            return pipe
        if fault == "get":
            async def get(*a: Any, **kw: Any) -> Any:
                fired.append("get")
                try:
                    raise RedisConnectionError("Connection closed by server.")
                except RedisConnectionError as exc:
                    raise WatchError("A ConnectionError occurred on while watching one or more keys") from exc
            pipe.get = get
        else:
            execute = pipe.execute

            async def touch_then_execute(*a: Any, **kw: Any) -> Any:
                key = hive.broker.keys.task(task_id)  # the same bytes: still a write, so EXEC refuses
                await redis.set(key, await redis.get(key))
                fired.append("exec")
                return await execute(*a, **kw)
            pipe.execute = touch_then_execute
        return pipe

    monkeypatch.setattr(redis, "pipeline", pipeline)
    return fired


@pytest.mark.parametrize("fault", ["get", "exec"])
async def test_a_zombie_requeue_whose_transaction_fails_once_starts_over(
    hive: Hive, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # Given a zombie, and a first transaction that loses its connection while watching or that EXEC refuses
    (task_id,) = await make_zombies(hive, 1)
    (zombie,) = await hive.broker.detect_zombie_tasks()
    try:
        fired = _first_transaction(hive, monkeypatch, fault, task_id)
        # When it is requeued
        outcome = await hive.broker.requeue_zombie(zombie, "test")
        monkeypatch.undo()
        # Then the compare-and-set started over on a fresh read and applied: pending again, once
        assert fired == [fault]
        assert outcome == "pending"
        after = await hive.status(task_id)
        assert after.status == TaskStatus.PENDING and after.engine_job_id != zombie.engine_job_id
        assert await hive.broker.detect_zombie_tasks() == []
    finally:
        monkeypatch.undo()
        await drop_jobs(hive, [task_id])
        await hive.cancel(task_id)


@pytest.mark.parametrize("fault", ["get", "exec"])
async def test_an_assignment_whose_transaction_fails_once_starts_over(
    hive: Hive, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # Given a queued task, and a first transaction that loses its connection while watching or that EXEC refuses
    task_id = await hive.submit("echo", {})
    try:
        fired = _first_transaction(hive, monkeypatch, fault, task_id)
        # When it is assigned to a node
        moved = await hive.broker.assign_to_node(task_id, "elsewhere")
        monkeypatch.undo()
        # Then the compare-and-set started over on a fresh read and moved it
        assert fired == [fault]
        assert moved is True
        after = await hive.status(task_id)
        assert (after.status, after.assigned_node, after.queue) == (
            TaskStatus.PENDING, "elsewhere", hive.broker.keys.node_queue("elsewhere")
        )
    finally:
        monkeypatch.undo()
        await hive.cancel(task_id)
