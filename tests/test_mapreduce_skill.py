"""ParallelSkill, the seed's JSON-string face of map-reduce, on a real Redis with in-process spores.

The seed's examples (THE_HIVE.md, "3. Parallel Skill" and "Scenariusze Użycia") run with only their import
lines changed; every return value is JSON, errors included; results come back in input order; a timeout
gives partial results (optionally cancelling the rest); reducers are built-in, plugin-provided or a task
type's default.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive_framework import Kernel, MessageBroker, ParallelSkill, TaskStatus, hookimpl
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, assert_stays

pytestmark = pytest.mark.redis

URLS = ["https://site1.com", "https://site2.com", "https://site3.com"]


class DesignClaims:
    """Stand-in for the scrape and scan plugins the seed's examples rely on: names a task type for the items.

    URLs (every item a string starting with "http") go to ``echo``; a "Security audit" job goes to ``mr_length``.
    """

    @hookimpl
    def claim_items(self, description: str, items: list[Any]) -> str | None:
        if items and all(isinstance(i, str) and i.startswith("http") for i in items):
            return "echo"
        if description.lower().startswith("security audit"):
            return "mr_length"
        return None


class LongestReducer:
    """A plugin reducer: ``longest`` picks the longest string result; other reducer names are not its business."""

    @hookimpl
    def reduce(self, reducer: str, results: list[Any]) -> Any:
        if reducer != "longest":
            return None
        return max((r for r in results if isinstance(r, str)), key=len, default="")


@pytest.fixture
def hive_kernel(hive_config):
    """Client and in-process spores know the test task types; installed plugins (scrape...) stay out of it."""
    return Kernel(hive_config, apps=[BASIC], load_entry_points=False)


@pytest.fixture
async def message_broker(hive_kernel):
    """The seed's ``message_broker``: a MessageBroker of the test hive, left unconnected (the skill connects it)."""
    broker = MessageBroker(hive_kernel)
    yield broker
    await broker.disconnect()


def dead_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def done_values(hive) -> list[str]:
    """Values of ``mr_item`` tasks in the order they finished."""
    raw = await hive.broker.redis.lrange(f"{hive.config.key_prefix}:test:mr_done", 0, -1)
    return [v.decode() for v in raw]


# --------------------------------------------------------------------------------------------------
# The seed's examples, verbatim but for the imports
# --------------------------------------------------------------------------------------------------


async def test_seed_map_reduce_example_runs_unchanged_with_a_claiming_plugin(
    hive_kernel, message_broker, run_spore, capsys
):
    # Given a stand-in for the scrape plugin (which would fetch the pages) claiming the URLs, and a spore
    hive_kernel.register_plugin(DesignClaims(), name="design-claims")
    await run_spore(name="skill-1", concurrency=4)

    # When the seed's example runs as written (THE_HIVE.md, "3. Parallel Skill")
    skill = ParallelSkill(message_broker)

    # Map-Reduce na liście URLi
    urls = ["https://site1.com", "https://site2.com", "https://site3.com"]
    result = await skill.map_reduce(
        task_description="Pobierz treść artykułu i stresuść do 3 zdań",
        items=json.dumps(urls),
        priority="high_priority",
        wait_timeout=300
    )

    # Wynik zawiera summary + results
    data = json.loads(result)
    print(f"Ukończone: {data['summary']['completed']}/{data['summary']['total_tasks']}")

    # Then every URL was processed by the claimed task type, in input order, and the summary says so
    assert capsys.readouterr().out == "Ukończone: 3/3\n", data
    assert data["task_type"] == "echo"
    assert data["summary"]["success_rate"] == 1.0
    assert [r["item"] for r in data["results"]] == urls
    assert [r["item_index"] for r in data["results"]] == [0, 1, 2]
    payloads = [r["result"]["payload"] for r in data["results"]]
    assert payloads == [{"item": u, "description": "Pobierz treść artykułu i stresuść do 3 zdań"} for u in urls]
    # and the default reducer collected the results in the same order
    assert data["reducer"] == "collect"
    assert [r["payload"]["item"] for r in data["reduced"]] == urls
    # and the tasks ran at the high priority asked for (get_task_status is JSON too)
    status = json.loads(await skill.get_task_status(data["results"][0]["task_id"]))
    assert status["status"] == "completed"
    assert status["priority"] == 10
    assert status["job_id"] == data["job_id"]


async def test_seed_bulk_and_repository_scan_scenarios_run_unchanged(hive_kernel, message_broker, run_spore):
    # Given claiming plugins for URLs and for a security audit, two spores, and the seed's parallel_skill
    hive_kernel.register_plugin(DesignClaims(), name="design-claims")
    await run_spore(name="skill-a", concurrency=4)
    await run_spore(name="skill-b", concurrency=4)
    parallel_skill = ParallelSkill(message_broker)

    # When scenario 1 (bulk processing) runs as written, with 20 URLs
    urls = [f"https://example.org/article/{i}" for i in range(20)]
    result = await parallel_skill.map_reduce(
        task_description="Pobierz artykuł i stresuść do 3 zdań",
        items=json.dumps(urls),
        priority="high_priority"
    )
    # Then all 20 completed, in order
    data = json.loads(result)
    assert data["summary"]["completed"] == data["summary"]["total_tasks"] == 20, data["summary"]
    assert [r["result"]["payload"]["item"] for r in data["results"]] == urls

    # When scenario 2 (repository scan) runs as written
    subtasks = [
        "Skanuj katalog /src",
        "Skanuj katalog /tests",
        "Skanuj katalog /config",
        "Skanuj zależności requirements.txt"
    ]

    result = await parallel_skill.parallel_execute(
        task_description="Security audit repozytorium",
        subtasks=json.dumps(subtasks),
        priority="high_priority"
    )
    # Then each subtask ran once, in subtask order, on the task type the plugin claimed, reduced by its default
    data = json.loads(result)
    assert data["task_type"] == "mr_length"
    assert data["summary"]["completed"] == 4
    assert [r["item"] for r in data["results"]] == subtasks
    assert [r["result"] for r in data["results"]] == [len(s) for s in subtasks]
    assert data["reducer"] == "sum"
    assert data["reduced"] == sum(len(s) for s in subtasks)


async def test_unclaimed_items_are_an_error_json_listing_the_task_types(message_broker):
    # Given no plugin that claims plain words (nothing is enqueued, so no spore is needed)
    skill = ParallelSkill(message_broker)

    # When map_reduce gets items nobody claims and no task_type
    data = json.loads(await skill.map_reduce("Do something", json.dumps(["alpha", "beta"])))

    # Then the answer is an error naming the way out and the task types that exist
    assert set(data) == {"error", "error_type"}, data
    assert "no plugin claims these items" in data["error"]
    for name in ("echo", "mr_item", "mr_length", "dag_step"):
        assert name in data["error"]
    # and nothing was enqueued
    stats = await message_broker.get_queue_stats()
    assert stats["high_priority_queue"] == stats["background_queue"] == 0


# --------------------------------------------------------------------------------------------------
# Every return value is JSON, errors included
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "task_type", "expected"),
    [
        ("[1, 2,", "mr_item", "items is not valid JSON"),
        ("not json at all", "mr_item", "items is not valid JSON"),
        ("[]", "mr_item", "items is empty"),
        ([], "mr_item", "items is empty"),
        ('{"a": 1}', "mr_item", "items must be a JSON array, got dict"),
        ({"a": 1}, "mr_item", "items must be a JSON array, got dict"),
        ('"https://site1.com"', "mr_item", "items must be a JSON array, got str"),
        ("42", "mr_item", "items must be a JSON array, got int"),
        ("null", "mr_item", "items must be a JSON array, got NoneType"),
        (None, "mr_item", "items must be a JSON array, got NoneType"),
        (42, "mr_item", "items must be a JSON array, got int"),
        (b"\xff[1]", "mr_item", "items is not valid JSON"),
        (json.dumps(URLS), "no_such_type", "unknown task type 'no_such_type'; known task types: "),
        (json.dumps(URLS), "", "no plugin claims these items"),
    ],
)
async def test_bad_input_is_an_error_json_and_nothing_is_enqueued(message_broker, items, task_type, expected):
    # Given a skill on the test hive
    skill = ParallelSkill(message_broker)

    # When map_reduce gets bad items or a task type nobody has
    result = await skill.map_reduce("describe", items, task_type=task_type or None, wait_timeout=1)

    # Then the result parses as JSON and carries the reason
    data = json.loads(result)
    assert "summary" not in data
    assert expected in data["error"], data
    # and nothing was enqueued
    await message_broker.connect()
    stats = await message_broker.get_queue_stats()
    assert sum(stats.values()) == 0, stats


async def test_bad_options_are_error_json_too(message_broker):
    # Given a skill on the test hive
    skill = ParallelSkill(message_broker)
    items = json.dumps([1, 2])

    # When options are wrong: a bad priority, a chunk size of 0, a parallel_execute with a dict of subtasks
    bad_priority = json.loads(await skill.map_reduce("d", items, priority="urgent!!", task_type="mr_item"))
    bad_chunk = json.loads(await skill.map_reduce("d", items, task_type="mr_item", chunk_size=0))
    bad_subtasks = json.loads(await skill.parallel_execute("d", json.dumps({"a": 1}), task_type="mr_item"))
    unknown_task = json.loads(await skill.get_task_status("no-such-task"))

    # Then each is an error object naming what was wrong
    assert "bad priority 'urgent!!'" in bad_priority["error"]
    assert "chunk_size must be >= 1" in bad_chunk["error"]
    assert "subtasks must be a JSON array" in bad_subtasks["error"]
    assert unknown_task == {"error": "no task with id 'no-such-task'", "task_id": "no-such-task"}


async def test_unreachable_redis_is_an_error_json_from_every_method(hive_config):
    # Given a skill whose broker points at a port where no Redis listens
    broker = MessageBroker(Kernel(hive_config.evolve(redis_url=f"redis://127.0.0.1:{dead_port()}/0"), apps=[BASIC]))
    skill = ParallelSkill(broker)

    # When each method is called
    answers = [
        await skill.map_reduce("d", json.dumps(URLS), task_type="echo", wait_timeout=1),
        await skill.parallel_execute("d", json.dumps(["a"]), task_type="echo", wait_timeout=1),
        await skill.get_task_status("abc"),
    ]

    # Then each answer is JSON saying Redis is unreachable (and where), not a traceback
    for answer in answers:
        data = json.loads(answer)
        assert data["error_type"] == "RedisUnavailable", data
        assert "no Redis answers at redis://127.0.0.1:" in data["error"]
    assert not broker.is_connected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
junk_items = st.one_of(
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.lists(json_values, max_size=4).map(json.dumps),
    st.lists(st.text(max_size=6), max_size=4).map(lambda xs: json.dumps(xs)[:-1]),  # truncated arrays
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["[NaN]", "[Infinity]", "[1e999]", '["\\ud800"]', "[" * 3000, '{"a": [1, 2]}', "[[]]"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=junk_items, task_type=st.sampled_from([None, "mr_item"]))
def test_any_items_string_gives_json_with_error_or_summary(hive_config, items, task_type):
    # Given a skill on the test hive and no spore (nothing runs; unfinished tasks are cancelled)
    async def call() -> str:
        broker = MessageBroker(Kernel(hive_config, apps=[BASIC], load_entry_points=False))
        try:
            return await ParallelSkill(broker).map_reduce(
                "junk", items, task_type=task_type, wait_timeout=0, cancel_on_timeout=True
            )
        finally:
            await broker.disconnect()

    async def status() -> str:
        broker = MessageBroker(Kernel(hive_config, load_entry_points=False))
        try:
            return await ParallelSkill(broker).get_task_status(items)
        finally:
            await broker.disconnect()

    # When map_reduce gets any string as items (and get_task_status the same string as a task id)
    result = asyncio.run(call())
    unknown = json.loads(asyncio.run(status()))

    # Then no such task is an error object
    assert unknown == {"error": f"no task with id {items!r}", "task_id": items}

    # Then json.loads works and the answer is an error or a report with one entry per item
    data = json.loads(result)
    assert isinstance(data, dict)
    assert ("error" in data) != ("summary" in data), data
    if "summary" in data:
        assert task_type == "mr_item"
        assert data["summary"]["total_tasks"] == len(json.loads(items)) == len(data["results"])
        assert data["summary"]["cancelled"] + data["summary"]["completed"] == data["summary"]["total_tasks"]


# --------------------------------------------------------------------------------------------------
# Order, partial results, cancellation
# --------------------------------------------------------------------------------------------------


async def test_results_keep_input_order_when_items_finish_out_of_order(hive, message_broker, run_spore):
    # Given a spore with a slot per item, and items that sleep less the later they come
    await run_spore(name="order", concurrency=8)
    items = [{"value": i, "seconds": round((7 - i) * 0.04, 2)} for i in range(8)]

    # When they are mapped
    data = json.loads(await ParallelSkill(message_broker).map_reduce("o", items, task_type="mr_item"))

    # Then they finished in a different order than they were given
    finished = await done_values(hive)
    assert sorted(finished) == [str(i) for i in range(8)]
    assert finished != [str(i) for i in range(8)], finished
    # but the results (and the collected reduction) are in input order
    assert [r["result"] for r in data["results"]] == list(range(8))
    assert [r["item_index"] for r in data["results"]] == list(range(8))
    assert data["reduced"] == list(range(8))


async def test_timeout_gives_partial_results_and_cancel_on_timeout_cancels_the_rest(
    hive, message_broker, run_spore
):
    # Given a spore with one slot more than the items that block on a gate, which stays shut for now
    spore = await run_spore(name="partial", concurrency=4)
    skill = ParallelSkill(message_broker)

    def items(gate: str) -> list[dict[str, Any]]:
        return [{"value": i, "gate": gate, "max_wait": 20} if i % 2 else {"value": i} for i in range(6)]

    async def open_and_drain(gate: str) -> None:
        await hive.broker.redis.set(f"{hive.config.key_prefix}:test:gate:{gate}", b"1")

        async def idle() -> bool:
            return spore.worker.running == 0

        await async_wait_until(idle, timeout=20, what="the spore to finish its gated attempts")

    # When the skill waits only 1.5 s, without cancelling
    first = json.loads(await skill.map_reduce("p", items("first"), task_type="mr_item", wait_timeout=1.5))

    # Then the quick items are completed, the gated ones are reported pending, all in input order
    assert first["summary"] | {"duration_s": 0} == {
        "total_tasks": 6, "completed": 3, "failed": 0, "pending": 3, "cancelled": 0, "success_rate": 0.5,
        "duration_s": 0,
    }
    assert [r["status"] for r in first["results"]] == ["completed", "pending"] * 3
    assert first["reduced"] == [0, 2, 4]
    assert 1.5 <= first["summary"]["duration_s"] < 5
    # and the pending ones go on: once their gate opens they complete
    await open_and_drain("first")
    pending_ids = [r["task_id"] for r in first["results"] if r["status"] == "pending"]
    assert [m.status for m in await hive.broker.get_tasks(pending_ids)] == [TaskStatus.COMPLETED] * 3

    # When a job of the same shape runs with cancel_on_timeout=True
    second = json.loads(await skill.map_reduce(
        "p", items("second"), task_type="mr_item", wait_timeout=1.5, cancel_on_timeout=True
    ))

    # Then the unfinished items are reported cancelled, and their tasks are cancelled in Redis
    assert [r["status"] for r in second["results"]] == ["completed", "cancelled"] * 3
    assert second["summary"]["cancelled"] == 3 and second["summary"]["pending"] == 0
    cancelled_ids = [r["task_id"] for r in second["results"] if r["status"] == "cancelled"]
    assert [m.status for m in await hive.broker.get_tasks(cancelled_ids)] == [TaskStatus.CANCELLED] * 3

    # When the gate opens and the spore finishes the attempts it had started
    await open_and_drain("second")

    # Then the cancelled tasks stay cancelled (a finishing attempt does not overwrite the cancellation)
    assert [m.status for m in await hive.broker.get_tasks(cancelled_ids)] == [TaskStatus.CANCELLED] * 3


@pytest.mark.parametrize(("chunk_size", "tasks"), [(1, 5), (2, 3)])
async def test_cancel_on_timeout_drops_queued_tasks_so_no_spore_runs_them(
    hive, message_broker, run_spore, chunk_size, tasks
):
    # Given no spore running
    skill = ParallelSkill(message_broker)

    # When a job (one or two items per task) times out at once with cancel_on_timeout=True
    data = json.loads(await skill.map_reduce(
        "q", [{"value": i} for i in range(5)], task_type="mr_item", wait_timeout=0, cancel_on_timeout=True,
        chunk_size=chunk_size,
    ))

    # Then every item is reported cancelled, and its task cancelled in Redis, with no queue left holding them
    assert data["summary"]["cancelled"] == 5
    assert [r["status"] for r in data["results"]] == ["cancelled"] * 5
    ids = sorted({r["task_id"] for r in data["results"]})
    assert len(ids) == tasks
    assert {m.status for m in await hive.broker.get_tasks(ids)} == {TaskStatus.CANCELLED}
    stats = await hive.queue_stats()
    assert stats["background_queue"] == stats["high_priority_queue"] == 0

    # When a spore then comes up
    await run_spore(name="late", concurrency=5)

    # Then it runs none of them
    async def nothing_ran() -> bool:
        return await done_values(hive) == []

    await assert_stays(nothing_ran, 0.5, "a cancelled task ran")


# --------------------------------------------------------------------------------------------------
# Reducers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reducer", "results", "expected"),
    [
        ("collect", [1, [2], {"a": 3}], [1, [2], {"a": 3}]),
        ("concat", [[1, 2], 3, [], [4]], [1, 2, 3, 4]),
        ("sum", [1, 2.5, "x", True, None], 3.5),
        ("count", [None, 0, "x"], 3),
        ("merge", [{"a": 1}, {"a": 2, "b": 3}, "ignored"], {"a": 2, "b": 3}),
        ("collect", [], []),
        ("sum", [], 0),
        ("merge", [], {}),
    ],
)
def test_built_in_reducers(hive_config, reducer, results, expected):
    # Given a kernel with only the default plugins
    kernel = Kernel(hive_config, load_entry_points=False)
    # When results are reduced by name
    reduced = kernel.reduce(reducer, results)
    # Then the built-in reducer combined them
    assert reduced == expected


async def test_reducers_named_built_in_plugin_provided_and_task_default(hive_kernel, message_broker, run_spore):
    # Given a plugin providing the "longest" reducer, and a spore
    hive_kernel.register_plugin(LongestReducer(), name="longest-reducer")
    await run_spore(name="reduce", concurrency=4)
    skill = ParallelSkill(message_broker)
    words = ["a", "bbbb", "cc", "ddd"]
    numbers = [{"value": 3}, {"value": 4}, {"value": 5, "fail": True}, {"value": 6}]

    # When jobs are reduced by a built-in, by the plugin's reducer and by the task type's default
    summed = json.loads(await skill.map_reduce("n", numbers, task_type="mr_item", reducer="sum"))
    longest = json.loads(await skill.map_reduce("w", [{"value": w} for w in words], task_type="mr_item",
                                                reducer="longest"))
    default = json.loads(await skill.map_reduce("w", json.dumps(words), task_type="mr_length"))
    overridden = json.loads(await skill.map_reduce("w", json.dumps(words), task_type="mr_length", reducer="count"))

    # Then each reduction is what its reducer makes of the completed results (the failed item left out)
    assert summed["summary"]["failed"] == 1
    assert summed["results"][2]["error"] == "ValueError: item 5 fails on purpose"
    assert (summed["reducer"], summed["reduced"]) == ("sum", 13)
    assert (longest["reducer"], longest["reduced"]) == ("longest", "bbbb")
    assert (default["reducer"], default["reduced"]) == ("sum", 10)
    assert (overridden["reducer"], overridden["reduced"]) == ("count", 4)


async def test_an_unknown_reducer_keeps_the_results_and_says_what_was_wrong(message_broker, run_spore):
    # Given a spore
    await run_spore(name="no-reducer", concurrency=2)

    # When a job names a reducer no plugin provides
    data = json.loads(await ParallelSkill(message_broker).map_reduce(
        "r", [{"value": 1}, {"value": 2}], task_type="mr_item", reducer="median"
    ))

    # Then the error names the reducer, and the work done is still reported
    assert "no plugin provides the reducer 'median'" in data["error"]
    assert data["summary"]["completed"] == 2
    assert [r["result"] for r in data["results"]] == [1, 2]
    assert data["reduced"] is None
