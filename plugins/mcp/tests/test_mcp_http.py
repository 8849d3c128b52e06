"""``hive mcp --http``: loopback by default, the bearer token checked on every request, the same tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from hive_framework import Hive, TaskStatus
from hive_framework.testing import async_wait_until
from mcp.shared.subscriptions import ResourceUpdated

from mcp_helpers import call_then_cancel, http_session, job_tasks, structured

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "s3cret-token-for-tests"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}


async def test_requests_without_the_token_are_refused_and_with_it_the_tools_answer(
    hive: Hive, spores: Any, http_server: Any
) -> None:
    server = http_server(token=TOKEN)
    url = server.url()
    assert url.startswith("http://127.0.0.1:")

    # Refused without a token (401) and with a wrong one (403), before the MCP server sees anything
    async with httpx2.AsyncClient() as raw:
        bare = await raw.post(url, json=INIT, headers={"Accept": "application/json, text/event-stream"})
        wrong = await raw.post(url, json=INIT, headers={"Authorization": "Bearer nope",
                                                        "Accept": "application/json, text/event-stream"})
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 403
    with pytest.raises(Exception):  # noqa: B017 (the SDK client cannot even connect)
        async with http_session(url, token=None) as client:
            await client.list_tools()

    async with http_session(url, token=TOKEN) as client:
        # the cluster status resource tells its listeners when a spore comes online
        async with client.listen(resource_subscriptions=["hive://cluster/status"]) as subscription:
            assert structured(await client.call_tool("cluster_status", {}))["online_nodes"] == 0
            await spores(1)
            with anyio.fail_after(20):
                event = await subscription.__anext__()
        assert isinstance(event, ResourceUpdated) and event.uri == "hive://cluster/status"

        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        report = structured(await client.call_tool(
            "map_reduce", {"task_description": "square", "items": list(range(20)), "task_type": "square"},
            progress_callback=on_progress,
        ))
    assert report["summary"]["completed"] == 20 and report["reduced"] == 2470
    assert progress == [float(i) for i in range(21)]
    log = server.log()
    assert "refused POST /mcp from 127.0.0.1: no bearer token" in log
    assert "refused POST /mcp from 127.0.0.1: wrong bearer token" in log
    assert "tools/call 'map_reduce' by hive-tests/1.0 via http 127.0.0.1:" in log and "token sha256:" in log, log
    assert TOKEN not in log


def test_listening_beyond_loopback_needs_a_token(mcp_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in mcp_env.items() if k != "MCP_HIVE_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "hive_framework", "mcp", "--http", "--address", "0.0.0.0"],
                          env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0 without a bearer token" in done.stderr, done.stderr


async def test_cancelling_a_call_over_http_cancels_its_tasks(hive: Hive, spores: Any, http_server: Any) -> None:
    url = http_server(token=TOKEN).url()
    await spores(1, concurrency=1)
    async with http_session(url, token=TOKEN) as client:
        job = await call_then_cancel(client, "map_reduce",
                                     {"task_description": "nap", "items": [30] * 3, "task_type": "nap"})

        async def all_cancelled() -> bool:
            return len(await job_tasks(hive, job, TaskStatus.CANCELLED)) == 3

        await async_wait_until(all_cancelled, timeout=20, what="the job's 3 tasks cancelled")
