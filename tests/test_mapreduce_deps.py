"""Task dependencies (``depends_on``) on a real Redis: a diamond DAG runs in order and the last step reads its
dependencies' results; a failure fails its dependents transitively; cycles and unknown ids are refused with
nothing stored."""

from __future__ import annotations

import uuid

import pytest

from hive_framework import InvalidTask, Kernel, TaskSpec, TaskStatus

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """Client and in-process spores know the test task types; installed plugins (scrape...) stay out of it."""
    return Kernel(hive_config, apps=[BASIC], load_entry_points=False)


def ids(*labels: str) -> dict[str, str]:
    """Fresh task ids (engine job keys live outside the test namespace, so ids must be unique)."""
    run = uuid.uuid4().hex[:8]
    return {label: f"dag-{label}-{run}" for label in labels}


def step(task_id: str, label: str, *deps: str, **payload: object) -> TaskSpec:
    return TaskSpec(task_type="dag_step", task_id=task_id, payload={"label": label, **payload},
                    depends_on=list(deps) or None)


async def dag_events(hive) -> list[str]:
    raw = await hive.broker.redis.lrange(f"{hive.config.key_prefix}:test:dag", 0, -1)
    return [e.decode() for e in raw]


async def test_diamond_runs_in_dependency_order_and_the_join_reads_both_results(hive, run_spore):
    # Given a diamond A -> B, A -> C, {B, C} -> D submitted in one batch, D listed first, no spore yet
    t = ids("A", "B", "C", "D")
    specs = [
        step(t["D"], "D", t["B"], t["C"]),
        step(t["B"], "B", t["A"], seconds=0.1),
        step(t["C"], "C", t["A"], seconds=0.02),
        step(t["A"], "A", seconds=0.02),
    ]
    assert await hive.submit_many(specs) == [t["D"], t["B"], t["C"], t["A"]]

    # Then only A is queued; the others wait for their dependencies
    stored = {m.task_id: m.status for m in await hive.broker.get_tasks(t.values())}
    assert stored == {t["A"]: TaskStatus.PENDING, t["B"]: TaskStatus.WAITING, t["C"]: TaskStatus.WAITING,
                      t["D"]: TaskStatus.WAITING}

    # When a spore with room for all of them runs
    await run_spore(name="dag", concurrency=4)
    done = await hive.wait(t["D"], timeout=20)

    # Then each step started only after all its dependencies ended
    events = await dag_events(hive)
    assert sorted(events) == sorted(f"{e}:{x}" for e in ("start", "end") for x in "ABCD")
    at = {e: i for i, e in enumerate(events)}
    assert at["end:A"] < at["start:B"] and at["end:A"] < at["start:C"]
    assert at["end:B"] < at["start:D"] and at["end:C"] < at["start:D"]
    # and D read B's and C's results (which in turn carry A's) through context.dependency_results()
    assert done.status == TaskStatus.COMPLETED, done.error
    a_result = {"label": "A", "deps": {}}
    assert done.result == {
        "label": "D",
        "deps": {
            t["B"]: {"label": "B", "deps": {t["A"]: a_result}},
            t["C"]: {"label": "C", "deps": {t["A"]: a_result}},
        },
    }


async def test_a_later_batch_may_depend_on_a_finished_task_and_reads_its_result(hive, run_spore):
    # Given a spore and a task that already completed
    await run_spore(name="later", concurrency=2)
    t = ids("A", "B")
    await hive.submit_many([step(t["A"], "A")])
    assert (await hive.wait(t["A"], timeout=20)).status == TaskStatus.COMPLETED

    # When a task depending on it is submitted in a later call
    await hive.submit_many([step(t["B"], "B", t["A"])])

    # Then it runs at once and sees A's result
    done = await hive.wait(t["B"], timeout=20)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.result["deps"] == {t["A"]: {"label": "A", "deps": {}}}


async def test_a_failed_dependency_fails_its_dependents_transitively_with_the_reason(hive, run_spore):
    # Given A -> B (fails), A -> C, {B, C} -> D, D -> E, in one batch, on a spore
    await run_spore(name="failing", concurrency=4)
    t = ids("A", "B", "C", "D", "E")
    await hive.submit_many([
        step(t["A"], "A"),
        step(t["B"], "B", t["A"], fail=True),
        step(t["C"], "C", t["A"]),
        step(t["D"], "D", t["B"], t["C"]),
        step(t["E"], "E", t["D"]),
    ])

    # When the chain settles
    e_done = await hive.wait(t["E"], timeout=20)
    c_done = await hive.wait(t["C"], timeout=20)

    # Then B failed with its own error, D with B's, E with D's: neither D nor E ever started
    b, d = await hive.broker.get_tasks([t["B"], t["D"]])
    assert b.status == TaskStatus.FAILED
    assert b.error == "RuntimeError: step B fails on purpose"
    assert d.status == TaskStatus.FAILED
    assert d.error == f"dependency {t['B']} failed: RuntimeError: step B fails on purpose"
    assert e_done.status == TaskStatus.FAILED
    assert e_done.error == f"dependency {t['D']} failed: {d.error}"
    assert c_done.status == TaskStatus.COMPLETED
    events = await dag_events(hive)
    assert "start:D" not in events and "start:E" not in events

    # When a later batch holds F depending on the failed B, and G depending on F
    late = ids("F", "G")
    await hive.submit_many([step(late["G"], "G", late["F"]), step(late["F"], "F", t["B"])])

    # Then both fail at once with the reason, without running
    f, g = await hive.wait(late["F"], timeout=5), await hive.wait(late["G"], timeout=5)
    assert f.status == g.status == TaskStatus.FAILED
    assert f.error == f"dependency {t['B']} failed"
    assert g.error == f"dependency {late['F']} failed: {f.error}"
    events = await dag_events(hive)
    assert "start:F" not in events and "start:G" not in events


async def test_cancelling_a_dependency_fails_the_waiting_dependent(hive):
    # Given B waiting for A, with no spore
    t = ids("A", "B")
    await hive.submit_many([step(t["A"], "A"), step(t["B"], "B", t["A"])])

    # When A is cancelled
    assert await hive.cancel(t["A"])

    # Then B fails, naming the cancelled dependency
    b = await hive.wait(t["B"], timeout=5)
    assert b.status == TaskStatus.FAILED
    assert b.error == f"dependency {t['A']} cancelled: cancelled"


async def nothing_stored(hive, task_ids) -> bool:
    tasks = await hive.broker.get_tasks(task_ids)
    stats = await hive.queue_stats()
    return tasks == [None] * len(task_ids) and sum(stats.values()) == 0


async def test_a_cycle_within_one_batch_is_refused_and_nothing_is_stored(hive):
    # Given a batch where A -> B -> C -> A (explicit ids), plus an innocent task before them
    t = ids("X", "A", "B", "C")
    specs = [
        step(t["X"], "X"),
        step(t["A"], "A", t["C"]),
        step(t["B"], "B", t["A"]),
        step(t["C"], "C", t["B"]),
    ]

    # When it is submitted
    # Then it is refused as a cycle naming the tasks
    with pytest.raises(InvalidTask, match="dependency cycle") as refused:
        await hive.submit_many(specs)
    for label in "ABC":
        assert t[label] in str(refused.value)
    # and nothing of the batch was stored or queued, not even the innocent task
    assert await nothing_stored(hive, list(t.values()))


async def test_depends_on_an_unknown_id_is_refused_and_nothing_is_stored(hive):
    # Given a batch whose second task depends on an id no task has
    t = ids("A", "B")
    missing = f"no-such-task-{uuid.uuid4().hex[:6]}"
    specs = [step(t["A"], "A"), step(t["B"], "B", t["A"], missing)]

    # When it is submitted (as a batch, and as a single task)
    # Then both are refused, naming the unknown id
    with pytest.raises(InvalidTask, match=f"depends_on names '{missing}', which is not a known task"):
        await hive.submit_many(specs)
    with pytest.raises(InvalidTask, match="which is not a known task"):
        await hive.submit("dag_step", {"label": "Z"}, depends_on=[missing])
    # and a task depending on itself is refused too
    with pytest.raises(InvalidTask, match="cannot depend on itself"):
        await hive.submit_many([step(t["A"], "A", t["A"])])
    # and nothing was stored
    assert await nothing_stored(hive, list(t.values()))


async def test_dependents_released_concurrently_start_exactly_once(hive, run_spore):
    # Given a join task waiting on twenty quick tasks that finish nearly together on a wide spore
    t = ids(*[f"p{i}" for i in range(20)], "join")
    parts = [step(t[f"p{i}"], f"p{i}") for i in range(20)]
    await hive.submit_many([*parts, step(t["join"], "join", *[s.task_id for s in parts])])
    await run_spore(name="wide", concurrency=20)

    # When the join finishes
    done = await hive.wait(t["join"], timeout=20)

    # Then it ran once, after all twenty, and saw all twenty results
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.attempt == 1
    assert len(done.result["deps"]) == 20
    events = await dag_events(hive)
    assert events.count("start:join") == 1
    assert events.index("start:join") > max(events.index(f"end:p{i}") for i in range(20))
