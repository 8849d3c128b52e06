"""``hive mcp`` over stdio, driven by the SDK's real client, with real spore processes doing the work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive, ParallelSkill, TaskStatus
from hive_framework.testing import async_wait_until

from mcp_helpers import call_then_cancel, error_json, job_tasks, stdio_session, structured

pytestmark = [pytest.mark.redis, pytest.mark.slow]

DEFAULT_TOOLS = {"map_reduce", "parallel_execute", "task_status", "wait", "cluster_status", "queue_stats",
                 "list_task_types"}


async def test_map_reduce_over_twenty_items_answers_the_seeds_report_with_progress(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(2)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == DEFAULT_TOOLS  # submit and cancel are opt-in
        assert tools["map_reduce"].input_schema["required"] == ["task_description", "items"]
        assert tools["map_reduce"].annotations is not None and not tools["map_reduce"].annotations.read_only_hint
        output = tools["map_reduce"].output_schema or {}
        assert {"summary", "task_type", "job_id", "results", "reducer", "reduced"} <= set(output["required"])
        assert tools["task_status"].annotations is not None and tools["task_status"].annotations.read_only_hint

        result = await client.call_tool(
            "map_reduce", {"task_description": "square each number", "items": list(range(20)), "task_type": "square"},
            progress_callback=on_progress,
        )
        subtasks = [{"name": "fetch"}, {"name": "parse"}, {"name": "store"}]
        parallel = structured(await client.call_tool(
            "parallel_execute", {"task_description": "three steps", "subtasks": subtasks, "task_type": "echo"}
        ))

    report = structured(result)
    assert report["summary"]["total_tasks"] == 20 and report["summary"]["completed"] == 20
    assert report["summary"]["success_rate"] == 1.0
    assert report["task_type"] == "square" and report["reducer"] == "sum"
    assert report["reduced"] == sum(i * i for i in range(20))
    assert [r["result"] for r in report["results"]] == [i * i for i in range(20)]  # input order
    assert {r["status"] for r in report["results"]} == {"completed"}
    # progress: one notification as the job is queued, then one per finished item, ending at 20/20
    assert progress[0][0] == 0 and progress[0][1] == 20 and report["job_id"] in (progress[0][2] or "")
    assert [p[0] for p in progress[1:]] == list(range(1, 21))
    assert progress[-1][2] is not None and "20/20 done" in progress[-1][2]
    # the same report as the seed's ParallelSkill gives in Python
    seed = json.loads(await ParallelSkill(hive.broker).map_reduce("square each number", list(range(20)),
                                                                  task_type="square"))
    assert set(report) == set(seed) and set(report["summary"]) == set(seed["summary"])
    assert [set(r) for r in report["results"]] == [set(r) for r in seed["results"]]
    assert report["reduced"] == seed["reduced"] and report["summary"]["completed"] == seed["summary"]["completed"]
    assert parallel["reduced"] == subtasks and parallel["reducer"] == "collect"
    assert [r["item"] for r in parallel["results"]] == subtasks
    # every call was logged with who made it
    log = (tmp_path / "mcp.log").read_text()
    assert "tools/call 'map_reduce' by hive-tests/1.0 via stdio user" in log, log


async def test_cancelling_a_long_map_reduce_cancels_its_tasks_in_redis(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(1, concurrency=1)
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        job = await call_then_cancel(client, "map_reduce",
                                     {"task_description": "nap", "items": [30] * 5, "task_type": "nap"})

        # the job's five tasks all end up cancelled in Redis, and the server is still there for the next call
        async def all_cancelled() -> bool:
            return len(await job_tasks(hive, job, TaskStatus.CANCELLED)) == 5

        await async_wait_until(all_cancelled, timeout=20, what="the job's 5 tasks cancelled")
        stats = structured(await client.call_tool("queue_stats", {}))
    assert stats["tasks_cancelled"] == 5 and stats["tasks_pending"] == 0 and stats["tasks_completed"] == 0
    log = (tmp_path / "mcp.log").read_text()
    assert "tools/call 'map_reduce' by hive-tests/1.0 via stdio" in log and ": cancelled in" in log, log


async def test_a_payload_breaking_the_task_types_schema_is_refused_and_nothing_is_enqueued(
    hive: Hive, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        types = {t["name"]: t for t in structured(await client.call_tool("list_task_types", {}))["task_types"]}
        assert types["square"]["payload_schema"]["properties"]["item"]["type"] == "integer"
        assert types["square"]["description"] == "Square an integer item (map-reduce over numbers, reduced with sum)."
        assert types["echo"]["payload_schema"] is None

        result = await client.call_tool(
            "map_reduce", {"task_description": "square", "items": [1, "two", 3, 5000], "task_type": "square"}
        )
        unclaimed = await client.call_tool("map_reduce", {"task_description": "who takes these?", "items": [1, 2]})
        stats = structured(await client.call_tool("queue_stats", {}))

    assert error_json(unclaimed)["error_type"] == "InvalidTask"
    assert "no plugin claims these items" in error_json(unclaimed)["error"]
    error = error_json(result)
    assert error["error_type"] == "PayloadRejected"
    assert "items[1] $.item: 'two' is not of type 'integer'" in error["error"]
    assert "items[3] $.item: 5000 is greater than the maximum of 1000" in error["error"]
    assert "nothing enqueued" in error["error"]
    assert sum(stats.values()) == 0
    assert await hive.broker.redis.keys(f"{hive.kernel.keys.prefix}:task:*") == []


async def test_a_handshake_era_host_gets_the_same_tools_progress_and_identity(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(1)
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with stdio_session(mcp_env, tmp_path / "mcp.log", mode="legacy") as client:
        assert client.protocol_version < "2026"  # the initialize handshake of the hosts in use today
        assert {t.name for t in (await client.list_tools()).tools} == DEFAULT_TOOLS
        report = structured(await client.call_tool(
            "map_reduce", {"task_description": "square", "items": [2, 3], "task_type": "square"},
            progress_callback=on_progress,
        ))
    assert report["reduced"] == 13 and progress == [0, 1, 2]
    assert "tools/call 'map_reduce' by hive-tests/1.0 via stdio" in (tmp_path / "mcp.log").read_text()
