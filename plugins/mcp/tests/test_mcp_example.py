"""The README's worked example: a short agent session, recorded from a real run (``MCP_RECORD_SESSION=FILE``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from hive_framework import Hive

from mcp_helpers import stdio_session, structured

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: The plugin's README, whose worked example quotes this session.
README = Path(__file__).resolve().parent.parent / "README.md"


async def test_an_agent_session_lists_the_types_and_runs_a_map_reduce(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path
) -> None:
    await spores(2)
    transcript: list[dict[str, Any]] = []

    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:

        async def call(name: str, arguments: dict[str, Any]) -> Any:
            progress: list[str] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append(f"{done:g}/{total:g} {message}")

            answer = structured(await client.call_tool(name, arguments, progress_callback=on_progress))
            transcript.append({"call": name, "arguments": arguments, "progress": progress, "answer": answer})
            return answer

        transcript.append({"list_tools": [t.name for t in (await client.list_tools()).tools]})
        types = await call("list_task_types", {})
        report = await call("map_reduce", {"task_description": "square each number", "items": [3, 1, 4, 1, 5],
                                           "task_type": "square"})
        cluster = await call("cluster_status", {})

    assert {"echo", "nap", "square"} <= {t["name"] for t in types["task_types"]}
    assert report["reduced"] == 9 + 1 + 16 + 1 + 25 and report["summary"]["success_rate"] == 1.0
    assert len(transcript[2]["progress"]) == 6 and transcript[2]["progress"][-1].startswith("5/5 ")
    assert cluster["online_nodes"] == 2 and cluster["queues"]["tasks_completed"] == 5
    # the README's quoted cluster_status names every queue count the real answer has, no more
    readme = await anyio.Path(README).read_text(encoding="utf-8")
    quoted = readme[readme.index('"queues": {'):]
    assert sorted(re.findall(r'"(\w+)":', quoted[len('"queues": {'):quoted.index("}")])) == sorted(cluster["queues"])
    target = os.environ.get("MCP_RECORD_SESSION")
    if target:
        await anyio.Path(target).write_text(json.dumps(transcript, indent=2) + "\n", encoding="utf-8")
