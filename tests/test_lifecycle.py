"""Progress and life-cycle hooks on a real Redis with real spore processes (the engine HIVE_TEST_BROKER names).

The hook impls (tests/apps/lifecycle.py) append each call to a file, so the tests assert the exact sequence
a spore process produced; tests/apps/lifecycle_broken.py raises in every hook, and no task may suffer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import InvalidProgress, InvalidTask, Kernel, PluginError, TaskProgress, TaskStatus, hookimpl
from hive_framework.broker.specs import MAX_HEADER_BYTES, check_headers
from hive_framework.monitor.collector import Monitor
from hive_framework.testing import async_wait_until, fast_config

from .integration_helpers import BASIC, hive_cli, open_gate

LIFECYCLE = "tests.apps.lifecycle"
BROKEN = "tests.apps.lifecycle_broken"
NOWHERE = "redis://127.0.0.1:1/0"  # the kernels built here never connect


def read_calls(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Task id -> its ``(hook, attempt)`` calls in order, from the hook log."""
    calls: dict[str, list[tuple[str, int]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            calls[entry["task_id"]].append((entry["hook"], entry["attempt"]))
    return calls


def entries(path: Path, hook: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["hook"] == hook]


# --- life-cycle hooks, across a spore process ------------------------------------------------------------


@pytest.mark.redis
async def test_hooks_see_each_attempt_in_order_and_a_raising_hook_loses_nothing(
    hive_config, spore_processes, tmp_path: Path
) -> None:
    # Given a spore process with the logging hooks and the raising ones, and a client with both as well
    log = tmp_path / "hooks.jsonl"
    spore = spore_processes("hooked", apps=(BASIC, LIFECYCLE, BROKEN), concurrency=4,
                            extra_env={"LIFECYCLE_HOOK_LOG": str(log)})
    from hive_framework import Hive

    async with Hive(Kernel(hive_config, apps=[BASIC, LIFECYCLE, BROKEN])) as hive:
        # When a task that fails once, one that always fails (max_retries=2) and a plain one run
        flaky = await hive.submit("flaky", {"failures": 1})
        hopeless = await hive.submit("always_fail", {})
        plain = await hive.submit("add", {"a": 1, "b": 2})
        assert (await hive.wait(flaky, timeout=30)).status == TaskStatus.COMPLETED
        assert (await hive.wait(hopeless, timeout=30)).status == TaskStatus.FAILED
        assert await hive.result(plain, timeout=30) == 3

        # Then (once the closing hooks, called after the outcome is written, have run) each task's calls are
        # exactly: one opening and one closing hook per attempt
        expected = {
            flaky: [("before_task", 1), ("on_retry", 1), ("before_task", 2), ("after_task", 2)],
            hopeless: [("before_task", 1), ("on_retry", 1), ("before_task", 2), ("on_retry", 2),
                       ("before_task", 3), ("on_task_failure", 3)],
            plain: [("before_task", 1), ("after_task", 1)],
        }

        async def all_closed() -> bool:
            calls = read_calls(log)
            return all(len(calls[t]) >= len(seq) for t, seq in expected.items())

        await async_wait_until(all_closed, timeout=15, what="every closing hook to be logged")
        calls = read_calls(log)
        assert {t: calls[t] for t in expected} == expected
        # and the hooks saw what was recorded: the errors, the exception types, the result, the header
        # before_enqueue added on the client (the broken impl's non-text header was dropped)
        retries = [e for e in entries(log, "on_retry") if e["task_id"] == flaky]
        assert retries[0]["error"] == "RuntimeError: planned failure 1"
        assert retries[0]["exception"] == "RuntimeError" and retries[0]["delay"] > 0
        failure = next(e for e in entries(log, "on_task_failure") if e["task_id"] == hopeless)
        assert failure["error"] == "ValueError: always fails (attempt 3)" and failure["exception"] == "ValueError"
        assert failure["status"] == "failed"
        done = next(e for e in entries(log, "after_task") if e["task_id"] == plain)
        assert done["result"] == 3 and done["status"] == "completed" and done["node"] == "hooked"
        started = entries(log, "before_task")
        assert {e["status"] for e in started} == {"running"}
        assert all(e["headers"] == {"origin": "lifecycle-test"} for e in started)
        assert (await hive.status(plain)).headers == {"origin": "lifecycle-test"}  # type: ignore[union-attr]
    # and every raising impl was logged by the spore, naming the plugin and the hook
    for hook in ("before_task", "after_task", "on_retry", "on_task_failure"):
        assert f"plugin app:{BROKEN} failed in {hook}" in spore.log()


@pytest.mark.redis
async def test_a_task_the_spores_kept_dying_on_is_reported_failed_without_an_attempt(
    hive_config, spore_processes, tmp_path: Path
) -> None:
    # Given a task recorded as having used up its attempts on spores that died (no spore ran it yet)
    from hive_framework import Hive

    log = tmp_path / "hooks.jsonl"
    async with Hive(Kernel(hive_config, apps=[BASIC])) as hive:
        task_id = await hive.submit("add", {"a": 1, "b": 1}, max_retries=0)
        message = await hive.status(task_id)
        assert message is not None
        message.attempt = 1  # its one attempt was started by a spore that was lost
        message.error = "the spore running it was lost"
        await hive.broker.save_task(message, previous=TaskStatus.PENDING)
        # When a spore with the hooks takes it
        spore_processes("finisher", apps=(BASIC, LIFECYCLE), extra_env={"LIFECYCLE_HOOK_LOG": str(log)})
        final = await hive.wait(task_id, timeout=30)
        # Then it fails without running, and on_task_failure alone reports it, with no exception
        assert final.status == TaskStatus.FAILED and "gave up after 1 attempts" in (final.error or "")
        await async_wait_until(lambda: _has_calls(log, task_id), timeout=15, what="on_task_failure")
        assert read_calls(log)[task_id] == [("on_task_failure", 2)]
        assert entries(log, "on_task_failure")[0]["exception"] is None


async def _has_calls(log: Path, task_id: str) -> bool:
    return bool(read_calls(log).get(task_id))


def test_a_kernel_refuses_a_wrapper_on_a_life_cycle_hook() -> None:
    class Around:
        @hookimpl(wrapper=True)
        def before_task(self, task: Any) -> Any:
            return (yield)

    with pytest.raises(PluginError, match="before_task is a life-cycle hook"):
        Kernel(fast_config(NOWHERE), plugins=[Around()], load_entry_points=False)


def test_life_cycle_hooks_nobody_implements_are_noted_as_empty() -> None:
    # By default only the counters plugin implements life-cycle hooks, the three that close an attempt
    default = Kernel(fast_config(NOWHERE), load_entry_points=False)
    assert {h: [i.plugin_name for i in impls] for h, impls in default.lifecycle.items() if impls} == {
        "after_task": ["counters"], "on_retry": ["counters"], "on_task_failure": ["counters"]}
    kernel = Kernel(fast_config(NOWHERE).evolve(disable_plugins=("counters",)), load_entry_points=False)
    assert kernel.lifecycle == {h: () for h in kernel.lifecycle} and len(kernel.lifecycle) == 5

    class Late:
        @hookimpl
        def after_task(self, task: Any) -> None: ...

    kernel.register_plugin(Late(), name="late")
    assert [impl.plugin_name for impl in kernel.lifecycle["after_task"]] == ["late"]


# --- progress, across a spore process ---------------------------------------------------------------------


@pytest.mark.redis
async def test_progress_is_live_throttled_and_readable_everywhere(hive_config, spore_processes) -> None:
    from hive_framework import Hive

    spore_processes("progress", apps=(BASIC, LIFECYCLE), concurrency=2)
    async with Hive(Kernel(hive_config, apps=[BASIC, LIFECYCLE])) as hive:
        # Given a handler reporting 20,000 progress values in a tight loop, then holding until a gate opens
        task_id = await hive.submit("progress_steps", {"steps": 20_000, "gate": "p1"})

        # When it has reported them all (and still runs)
        async def last_seen() -> TaskProgress | None:
            progress = await hive.progress(task_id)
            return progress if progress is not None and progress.done == 20_000 else None

        live = await async_wait_until(last_seen, timeout=20, what="the last progress value")
        # Then the last value is readable while it runs, with its note and attempt
        assert (live.done, live.total, live.note, live.attempt) == (20_000, 20_000, "step 20000", 1)
        assert (await hive.status(task_id)).status == TaskStatus.RUNNING  # type: ignore[union-attr]
        # and from the command line and the Monitor's task JSON
        shown = await hive_cli(hive_config, "--app", LIFECYCLE, "task", task_id)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["progress"]["done"] == 20_000
        row = await Monitor(hive.broker).task(task_id)
        assert row is not None and row["progress"]["note"] == "step 20000"
        # When the gate opens, Then it completes, having written progress about once per 0.2 s, not 20,000 times
        await open_gate(hive, "p1")
        result = await hive.result(task_id, timeout=20)
        assert 1 <= result["writes"] <= result["seconds"] / 0.2 + 2, result
        # and the final record keeps the last value
        final = await hive.status(task_id)
        assert final is not None and final.progress is not None and final.progress.done == 20_000


@pytest.mark.redis
async def test_map_stream_yields_each_items_progress_before_its_outcome(hive_config, spore_processes) -> None:
    from hive_framework import Hive, ItemOutcome, ItemProgress

    spore_processes("progress-map", apps=(BASIC, LIFECYCLE), concurrency=3)
    async with Hive(Kernel(hive_config, apps=[BASIC, LIFECYCLE])) as hive:
        # Given three items whose handlers report five steps each, then hold until their gate opens
        items = [{"steps": 5, "gate": f"map-{i}"} for i in range(3)]
        events: list[ItemOutcome | ItemProgress] = []
        opened: set[int] = set()
        # When they are streamed with progress looked up every 50 ms
        async with asyncio.timeout(60):
            async for event in hive.map_stream("progress_steps", items, progress=0.05):
                events.append(event)
                if isinstance(event, ItemProgress) and event.progress.done == 5:
                    (index,) = event.item_indexes
                    if index not in opened:  # the item said it is done: let it finish
                        opened.add(index)
                        await open_gate(hive, f"map-{index}")
        # Then each item's last progress (5 of 5) came before its outcome, once, and nothing after it
        outcomes = [e for e in events if isinstance(e, ItemOutcome)]
        assert sorted(o.item_index for o in outcomes) == [0, 1, 2] and all(o.ok for o in outcomes)
        for outcome in outcomes:
            at = events.index(outcome)
            progress = [e for e in events if isinstance(e, ItemProgress) and e.item_indexes == [outcome.item_index]]
            assert progress and (progress[-1].progress.done, progress[-1].progress.total) == (5, 5)
            assert all(events.index(p) < at for p in progress)
            assert progress[-1].task_id == outcome.task_id
        # and a value is yielded only when it changed
        states = [(e.task_id, e.progress.done, e.progress.note) for e in events if isinstance(e, ItemProgress)]
        assert len(states) == len(set(states))


@pytest.mark.redis
async def test_progress_from_a_sync_handler_and_bad_values_fail_the_task_clearly(
    hive_config, spore_processes
) -> None:
    from hive_framework import Hive

    spore_processes("progress-sync", apps=(BASIC, LIFECYCLE), concurrency=2)
    async with Hive(Kernel(hive_config, apps=[BASIC, LIFECYCLE])) as hive:
        # Given a sync handler (in a spore thread) reporting on every item
        task_id = await hive.submit("progress_sync", {"items": 5000})
        assert await hive.result(task_id, timeout=20) == 5000
        # Then the last value lands, from the record at once and from the live key within the throttle
        progress = await hive.progress(task_id)
        assert progress is not None and (progress.done, progress.total) == (5000, 5000)

        # When handlers report nonsense, Then their tasks fail naming the problem
        for done, total, words in ((float("nan"), 1, "finite"), (-1, 3, ">= 0"), (4, 3, "more than total")):
            bad = await hive.submit("progress_bad", {"done": str(done), "total": str(total)})
            message = await hive.wait(bad, timeout=20)
            assert message.status == TaskStatus.FAILED
            assert message.error is not None and message.error.startswith("InvalidProgress: progress ")
            assert words in message.error, message.error
        # and a task with no progress reports None; an unknown id is refused
        plain = await hive.submit("add", {"a": 1, "b": 1})
        await hive.wait(plain, timeout=20)
        assert await hive.progress(plain) is None
        with pytest.raises(InvalidTask, match="no task with id"):
            await hive.progress("no-such-task")


# --- what handlers and hooks may pass: checked, never crashing -------------------------------------------

numbers = (st.integers(min_value=-(10**20), max_value=10**20) | st.floats() | st.booleans() | st.none()
           | st.text(max_size=3))


@given(done=numbers, total=numbers, note=st.none() | st.text(max_size=600) | st.integers())
def test_progress_values_are_either_sound_or_refused_with_invalid_progress(done: Any, total: Any, note: Any) -> None:
    try:
        value = TaskProgress.checked(done, total, note)
    except InvalidProgress as exc:
        assert str(exc).startswith("progress ")
        return
    assert math.isfinite(value.done) and math.isfinite(value.total)
    assert 0 <= value.done <= value.total
    assert value.note is None or (isinstance(value.note, str) and len(value.note) <= 500)


@given(headers=st.none() | st.dictionaries(st.text(max_size=6) | st.integers(), st.text(max_size=6) | st.integers()
                                           | st.none(), max_size=5) | st.lists(st.text(), max_size=2)
       | st.dictionaries(st.just("big"), st.just("x" * MAX_HEADER_BYTES)))
def test_headers_are_either_text_to_text_or_refused_with_invalid_task(headers: Any) -> None:
    try:
        checked = check_headers(headers)
    except InvalidTask as exc:
        assert "headers" in str(exc)
        return
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in checked.items())
