"""The task tools (submit and cancel opted in), resources and the cluster view, over stdio with a spore process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive, TaskStatus

from mcp_helpers import error_json, stdio_session, structured

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def mcp_settings() -> dict[str, Any]:
    return {"enable": ["submit", "cancel"], "disable": ["parallel_execute"], "max_wait": 5}


async def test_submit_wait_status_cancel_and_the_task_resource(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(1)
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"submit", "cancel"} <= tools and "parallel_execute" not in tools

        # a payload that breaks the schema is refused, and nothing is enqueued
        refused = error_json(await client.call_tool("submit", {"task_type": "square", "payload": {"item": "7"}}))
        assert refused["error_type"] == "PayloadRejected" and "$.item: '7' is not of type 'integer'" in refused["error"]
        assert sum((await hive.queue_stats()).values()) == 0

        submitted = structured(await client.call_tool("submit", {"task_type": "square", "payload": {"item": 7}}))
        assert submitted["task_type"] == "square" and submitted["status"] in ("pending", "running", "completed")
        waited = structured(await client.call_tool("wait", {"task_id": submitted["task_id"], "timeout": 30}))
        assert waited["finished"] is True and waited["task"]["result"] == 49
        status = structured(await client.call_tool("task_status", {"task_id": submitted["task_id"]}))
        assert status["status"] == "completed" and status["assigned_node"] == "spore-0"
        resource = await client.read_resource(f"hive://tasks/{submitted['task_id']}")
        assert json.loads(resource.contents[0].text)["result"] == 49

        # a long task: wait is bounded (by the call's timeout, and max_wait = 5 s), then cancel stops it
        long = structured(await client.call_tool("submit", {"task_type": "nap", "payload": {"item": 60}}))
        waited = structured(await client.call_tool("wait", {"task_id": long["task_id"], "timeout": 0.5}))
        assert waited["finished"] is False and waited["task"]["status"] in ("pending", "running")
        cancelled = structured(await client.call_tool("cancel", {"task_id": long["task_id"]}))
        assert cancelled == {"task_id": long["task_id"], "cancelled": True, "status": "cancelled"}
        assert (await hive.status(long["task_id"])).status == TaskStatus.CANCELLED  # type: ignore[union-attr]

        unknown = error_json(await client.call_tool("task_status", {"task_id": "no-such-task"}))
        assert "no task with id 'no-such-task'" in unknown["error"]

        cluster = structured(await client.call_tool("cluster_status", {}))
        assert cluster["online_nodes"] == 1 and cluster["nodes"][0]["node_name"] == "spore-0"
        assert cluster["queues"]["tasks_completed"] == 1 and cluster["queues"]["tasks_cancelled"] == 1
        resource = await client.read_resource("hive://cluster/status")
        assert json.loads(resource.contents[0].text)["online_nodes"] == 1


async def test_submit_with_a_delay_or_an_eta_waits_scheduled_then_runs(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(1)
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        # the tool declares both: delay as seconds >= 0, eta as a date-time
        (tool,) = [t for t in (await client.list_tools()).tools if t.name == "submit"]
        properties = tool.input_schema["properties"]
        assert any(branch.get("minimum") == 0 for branch in properties["delay"]["anyOf"])
        assert properties["eta"]["format"] == "date-time"

        # bad values are refused by name, and nothing is enqueued
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        both = error_json(await client.call_tool("submit", {"task_type": "square", "payload": {"item": 2},
                                                            "delay": 1, "eta": soon}))
        assert both["error_type"] == "InvalidTask" and "give delay or eta, not both" in both["error"]
        naive = error_json(await client.call_tool("submit", {"task_type": "square", "payload": {"item": 2},
                                                             "eta": "2030-01-31T09:00:00"}))
        assert naive["error_type"] == "InvalidTask" and "no time zone" in naive["error"]
        garbled = error_json(await client.call_tool("submit", {"task_type": "square", "payload": {"item": 2},
                                                               "eta": "next tuesday"}))
        assert garbled["error_type"] == "InvalidTask" and "bad eta" in garbled["error"]
        negative = await client.call_tool("submit", {"task_type": "square", "payload": {"item": 2}, "delay": -1})
        assert negative.is_error and "delay" in negative.content[0].text  # type: ignore[union-attr]
        assert sum((await hive.queue_stats()).values()) == 0

        # a delay or an eta stores the task at once as scheduled, says when, and it runs once due, not before
        for when in ("delay", "eta"):
            ahead: dict[str, Any] = (
                {"delay": 1.5} if when == "delay" else {"eta": (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()}
            )
            submitted = structured(await client.call_tool("submit", {"task_type": "square", "payload": {"item": 3},
                                                                     **ahead}))
            assert submitted["status"] == "scheduled", submitted
            eta = datetime.fromisoformat(submitted["eta"])
            waited = structured(await client.call_tool("wait", {"task_id": submitted["task_id"], "timeout": 30}))
            assert waited["finished"] is True and waited["task"]["result"] == 9
            assert datetime.fromisoformat(waited["task"]["started_at"]) >= eta


def test_a_bad_mcp_section_stops_the_server_with_the_key_named(
    hive_config: Any, tmp_path: Path, mcp_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    (tmp_path / "hive.toml").write_text('[plugins.mcp]\nenable = ["scan_everything"]\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "hive_framework", "mcp"], env=mcp_env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 78  # EX_CONFIG, as every configuration mistake
    assert "plugins.mcp.enable" in done.stderr and "unknown tool(s) scan_everything" in done.stderr, done.stderr
