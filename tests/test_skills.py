"""A heterogeneous hive: spores serve different task types and never take one they cannot run; clients
submit types by name; requirements from the command line; tasks wait, saying why, for a spore of their type."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import Kernel, TaskSpec, TaskStatus, UnknownTaskType, wire
from hive_framework.broker import recovery
from hive_framework.broker.placement import advertise, unserved_key
from hive_framework.errors import InvalidTask
from hive_framework.models import NodeInfo
from hive_framework.policies import parse_requirements
from hive_framework.tasks import TaskType
from hive_framework.testing import async_wait_until, child_env, hive_argv

from .integration_helpers import REPO_ROOT, assert_stays, wait_for_nodes

SKILLS = "tests.apps.skills"

pytestmark = [pytest.mark.redis]


@pytest.fixture
def hive_kernel(hive_config):
    """The client has none of the skills' code: it submits by name."""
    return Kernel(hive_config)


def skilled(spore_processes, name: str, types: str, concurrency: int = 1) -> Any:
    return spore_processes(name, apps=(SKILLS,), concurrency=concurrency, extra_env={"TEST_SKILLS_SERVED": types})


async def cli(config, *args: str) -> Any:
    """``hive ARGS`` in its own process, with no app loaded (a bare shell)."""
    env = child_env(config, {"HIVE_APP": "", "PYTHONPATH": str(REPO_ROOT)})
    return await asyncio.to_thread(subprocess.run, hive_argv(*args, log_level="warning"), env=env, cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=60)


# --- parsing --require / --tag ------------------------------------------------------------------------


@given(
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,20}", fullmatch=True).filter(lambda k: k != "tags"),
                    st.one_of(st.integers(), st.booleans(), st.text(max_size=10), st.floats(allow_nan=False)),
                    max_size=5),
    st.lists(st.text(min_size=1, max_size=10).filter(lambda t: t.strip() and t.isprintable()), max_size=4),
)
def test_requirements_from_the_command_line_read_back_as_given(wanted: dict[str, Any], tags: list[str]) -> None:
    parsed = parse_requirements([f"{k}={json.dumps(v)}" for k, v in wanted.items()], tags)
    assert {k: v for k, v in parsed.items() if k != "tags"} == wanted
    assert parsed.get("tags", []) == sorted({t.strip() for t in tags})


@given(st.lists(st.text(max_size=30), max_size=4), st.lists(st.text(max_size=10), max_size=3))
def test_any_command_line_requirement_parses_or_is_refused_clearly(requires: list[str], tags: list[str]) -> None:
    try:
        parsed = parse_requirements(requires, tags)
    except InvalidTask as exc:
        assert "requirement" in str(exc) or "tag" in str(exc)
    else:
        assert isinstance(parsed, dict)


def test_a_bare_requirement_means_true_and_text_stays_text() -> None:
    assert parse_requirements(["gpu", "zone=eu", "min_free_memory_mb=2048"], ["pool"]) == {
        "gpu": True, "zone": "eu", "min_free_memory_mb": 2048, "tags": ["pool"]}


# --- placement, in one process ------------------------------------------------------------------------


async def test_an_unknown_type_is_refused_unless_allowed_and_then_waits_with_its_reason(hive) -> None:
    with pytest.raises(UnknownTaskType, match="--allow-unknown"):
        await hive.submit("rezise", {})
    task_id = await hive.submit("transcode", {}, allow_unknown=True, wait_timeout=0.5)
    queued = await hive.status(task_id)
    assert (queued.status, queued.reason) == (TaskStatus.PENDING, "no online spore serves `transcode`")
    assert queued.queue == hive.broker.engine.queue_for(0, None, "transcode")
    # a task with no wait timeout waits for good; the other fails once its wait timeout has passed
    forever = await hive.submit("transcode", {}, allow_unknown=True)
    counts = await hive.broker.reroute_stranded(now=time.time() + 60)
    assert counts["expired"] == 1
    failed = await hive.status(task_id)
    assert failed.status == TaskStatus.FAILED
    assert failed.error == "WaitTimeout: no online spore served `transcode` within 0.5s"
    assert (await hive.status(forever)).status == TaskStatus.PENDING
    assert [m.task_id for m in await hive.broker.dead_letters()] == [task_id]


async def test_waiting_tasks_are_swept_in_chunks_and_the_ones_gone_are_forgotten(hive, monkeypatch) -> None:
    # Given 7 tasks waiting for a `transcode` spore, read 3 per round trip: 4 past their wait timeout, 1 with
    # none, and 2 no longer waiting (one cancelled, one whose record is gone)
    monkeypatch.setattr(recovery, "UNSERVED_CHUNK", 3)
    late = [await hive.submit("transcode", {}, allow_unknown=True, wait_timeout=0.5) for _ in range(4)]
    forever = await hive.submit("transcode", {}, allow_unknown=True)
    cancelled = await hive.submit("transcode", {}, allow_unknown=True, wait_timeout=0.5)
    vanished = await hive.submit("transcode", {}, allow_unknown=True, wait_timeout=0.5)
    await hive.cancel(cancelled)
    await hive.broker.redis.delete(hive.broker.keys.task(vanished))
    # When the watchdog's pass runs after the timeouts
    counts = await hive.broker.reroute_stranded(now=time.time() + 60)
    # Then the 4 late ones failed, each once; the one with no timeout still waits; only it stays in the index
    assert counts["expired"] == 4
    assert {(await hive.status(t)).status for t in late} == {TaskStatus.FAILED}
    assert (await hive.status(forever)).status == TaskStatus.PENDING
    waiting = await hive.broker.redis.zrange(unserved_key(hive.broker.keys), 0, -1)
    assert [w.decode() for w in waiting] == [forever]


async def test_an_advertised_type_is_queued_by_name_with_its_declared_options(hive) -> None:
    # Given a spore once advertised "resize" (its options, not its code) and is gone now
    resize = TaskType(name="resize", handler=lambda payload: None, priority="high_priority", timeout=7,
                      max_retries=1, requirements={"tags": ["img"]}, wait_timeout=30)
    await advertise(hive.broker.redis, hive.broker.keys, {"resize": resize})
    # When a client without its code submits it by name
    task_id = await hive.submit("resize", {"path": "a.png"})
    # Then the task carries the declared options, and the reason it waits for a spore that meets them
    message = await hive.status(task_id)
    assert (message.priority, message.timeout, message.max_retries, message.wait_timeout) == (10, 7.0, 1, 30.0)
    assert message.requirements == {"tags": ["img"]}
    assert message.status == TaskStatus.WAITING
    assert message.reason == "waiting for an online node that serves `resize` and meets {'tags': ['img']}"
    # and the caller's own options still win
    other = await hive.status(await hive.submit("resize", {}, priority=3, max_retries=0, requirements={}))
    assert (other.priority, other.max_retries) == (3, 0)


async def test_a_balancer_returning_none_leaves_the_task_on_its_shared_queue(hive, monkeypatch) -> None:
    node = NodeInfo(node_id="gpu-1", node_name="gpu-1", host="h", pid=1, concurrency=4,
                    capabilities={"gpu": True}, task_types=["resize"])
    await hive.broker.redis.psetex(hive.broker.keys.node("gpu-1"), 60_000, wire.dumps(node))
    await hive.broker.redis.sadd(hive.broker.keys.nodes, "gpu-1")
    asked: list[str] = []

    def declining(task: Any, nodes: list[NodeInfo]) -> None:
        asked.append(task.task_id)
        return None

    monkeypatch.setattr(hive.kernel, "route", declining)
    task_id = await hive.submit("resize", {}, requirements={"gpu": True}, allow_unknown=True)
    message = await hive.status(task_id)
    assert asked == [task_id]
    assert (message.status, message.assigned_node, message.reason) == (TaskStatus.PENDING, None, None)
    assert message.queue == hive.broker.engine.queue_for(0, None, "resize")


# --- real processes ---------------------------------------------------------------------------------------


async def test_three_hosts_with_overlapping_and_disjoint_types_run_1000_mixed_tasks(hive, spore_processes) -> None:
    # Given three spores: {resize, scan}, {scan, scrape}, {transcode}
    serves = {"host-a": {"resize", "scan"}, "host-b": {"scan", "scrape"}, "host-c": {"transcode"}}
    for name, types in serves.items():
        skilled(spore_processes, name, ",".join(sorted(types)))
    await wait_for_nodes(hive, list(serves))
    # paused while 1,000 mixed tasks (random levels) are queued, so each spore then sees all its work at once
    await hive.broker.broadcast_control("PAUSE")

    async def all_paused() -> bool:
        return {n.node_id: n.paused for n in await hive.nodes()} == dict.fromkeys(serves, True)

    await async_wait_until(all_paused, timeout=30, what="every spore to pause")
    rng = random.Random(14)
    types = ["resize", "scan", "scrape", "transcode"]
    specs = [TaskSpec(task_type=rng.choice(types), payload={"i": i}, priority=rng.randint(0, 10)) for i in range(1000)]
    ids = await hive.submit_many(specs)
    await hive.broker.broadcast_control("RESUME")

    # Then every task completes on a spore that serves its type, none fails as an unknown type
    done = [await hive.wait(task_id, timeout=120) for task_id in ids]
    statuses = Counter(m.status for m in done)
    unknown = [m for m in done if "UnknownTaskType" in (m.error or "")]
    print(f"\n1,000 mixed tasks: {dict(statuses)}; UnknownTaskType: {len(unknown)}; "
          f"per spore: {dict(Counter(m.assigned_node for m in done))}")
    assert statuses == {TaskStatus.COMPLETED: 1000}
    assert unknown == []
    for message in done:
        assert message.task_type in serves[message.assigned_node], message
        assert message.attempt == 1
    # and each spore started its tasks in strict priority order (one slot each, all queued before it resumed)
    for name in serves:
        started = [v.decode() for v in await hive.broker.redis.lrange(
            f"{hive.config.key_prefix}:test:started:{name}", 0, -1)]
        levels = [int(s.split(":", 1)[0]) for s in started]
        assert len(levels) == sum(1 for m in done if m.assigned_node == name)
        assert levels == sorted(levels, reverse=True), f"{name} broke priority order"


async def test_submit_by_name_from_a_bare_shell_and_a_type_waits_for_its_spore(hive, hive_config,
                                                                                spore_processes) -> None:
    # Given a spore serving only resize
    skilled(spore_processes, "resizer", "resize")
    await wait_for_nodes(hive, ["resizer"])
    # When a shell with no app loaded submits resize by name, Then the spore runs it with resize's options
    submitted = await cli(hive_config, "submit", "resize", "--payload", '{"path": "a.png"}', "--wait")
    assert submitted.returncode == 0, submitted.stderr
    ran = json.loads(submitted.stdout)
    assert ran["status"] == "completed"
    assert (ran["result"]["node"], ran["priority"], ran["timeout"], ran["max_retries"]) == ("resizer", 10, 7.0, 1)
    # When it misspells a type, Then nothing is queued and the error says how to insist
    typo = await cli(hive_config, "submit", "rezise")
    assert typo.returncode != 0 and "--allow-unknown" in typo.stderr
    # When it insists on a type no spore serves, Then the task waits, saying why, in hive task and hive status
    queued = await cli(hive_config, "submit", "transcode", "--allow-unknown", "--spore-wait", "300")
    assert queued.returncode == 0, queued.stderr
    task_id = queued.stdout.strip()
    shown = json.loads((await cli(hive_config, "task", task_id)).stdout)
    assert (shown["status"], shown["reason"], shown["wait_timeout"]) == (
        "pending", "no online spore serves `transcode`", 300.0)
    status = await cli(hive_config, "status")
    assert "waiting: 1 task(s): no online spore serves `transcode`" in status.stdout

    async def untouched() -> bool:
        message = await hive.status(task_id)
        return message.status == TaskStatus.PENDING and message.attempt == 0

    await assert_stays(untouched, 1.0, "the resize spore must not take a transcode task")
    # When a spore serving it joins, Then it runs there
    skilled(spore_processes, "transcoder", "transcode")
    done = await hive.wait(task_id, timeout=30)
    assert (done.status, done.assigned_node, done.reason) == (TaskStatus.COMPLETED, "transcoder", None)
    status = await cli(hive_config, "status")
    assert "waiting:" not in status.stdout


async def test_requirements_from_the_command_line_route_the_task(hive, hive_config, spore_processes) -> None:
    # Given two spores of the same type, one tagged pool
    spore_processes("plain", apps=(SKILLS,), concurrency=1, extra_env={"TEST_SKILLS_SERVED": "scan"})
    spore_processes("pooled", apps=(SKILLS,), concurrency=1,
                    extra_env={"TEST_SKILLS_SERVED": "scan", "HIVE_NODE_TAGS": "pool"})
    await wait_for_nodes(hive, ["plain", "pooled"])
    # When tasks are submitted with --tag pool, Then they all run on the tagged spore
    ids = []
    for _ in range(4):
        submitted = await cli(hive_config, "submit", "scan", "--tag", "pool")
        assert submitted.returncode == 0, submitted.stderr
        ids.append(submitted.stdout.strip())
    for task_id in ids:
        message = await hive.wait(task_id, timeout=30)
        assert (message.status, message.assigned_node, message.requirements) == (
            TaskStatus.COMPLETED, "pooled", {"tags": ["pool"]})
    # and Hive.map takes requirements too
    results = await hive.map("scan", [{"i": i} for i in range(3)], requirements={"tags": ["pool"]}, timeout=30)
    assert {r["node"] for r in results} == {"pooled"}
