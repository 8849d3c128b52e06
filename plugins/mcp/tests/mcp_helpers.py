"""Start ``hive mcp`` as a real process (stdio or HTTP) and talk to it with the SDK's own client."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from hive_framework import Hive, HiveConfig, TaskMessage, TaskStatus
from hive_framework.testing import HiveProcess, wait_until
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

TESTS_DIR = Path(__file__).parent
APP = "mcp_apps"
CLIENT_INFO = {"name": "hive-tests", "version": "1.0"}


def write_toml(path: Path, settings: Mapping[str, Any], **other_plugins: Mapping[str, Any]) -> Path:
    """A hive.toml holding only ``[plugins.mcp]`` and ``other_plugins``' sections (the environment gives the rest)."""
    lines: list[str] = []
    for name, section in {"mcp": settings, **other_plugins}.items():
        lines += [f"[plugins.{name}]", *(f"{key} = {json.dumps(value)}" for key, value in section.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def server_env(config: HiveConfig, toml: Path, **extra: str) -> dict[str, str]:
    """What ``hive mcp`` runs with: the test hive's settings, the test app, and [plugins.mcp] from ``toml``."""
    env = config.to_env()
    env["HIVE_APP"] = APP
    env["HIVE_CONFIG"] = str(toml)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), os.getcwd()])
    env.update(extra)
    return env


@asynccontextmanager
async def stdio_session(env: dict[str, str], log: Path, mode: str = "auto") -> AsyncIterator[Client]:
    """``hive mcp`` started by the SDK's stdio client, as an agent host starts it; its stderr goes to ``log``."""
    from mcp_types import Implementation

    params = StdioServerParameters(command=sys.executable, args=["-m", "hive_framework", "mcp"], env=env)
    with open(log, "w", encoding="utf-8") as errlog:  # noqa: ASYNC230 (a local log file opens at once)
        async with Client(stdio_client(params, errlog=errlog), client_info=Implementation(**CLIENT_INFO),
                          read_timeout_seconds=120, mode=mode) as client:
            yield client


class HttpServer(HiveProcess):
    """``hive mcp --http --port 0`` as a real process; ``url`` is read from the line it prints on start."""

    kind = "mcp"

    def __init__(self, config: HiveConfig, env: dict[str, str], log_dir: Path, *args: str) -> None:
        extra = {k: v for k, v in env.items() if k in ("HIVE_CONFIG", "MCP_HIVE_TOKEN")}
        extra["PYTHONPATH"] = str(TESTS_DIR)
        super().__init__(config, "http", ["mcp", "--http", "--port", "0", *args], apps=(APP,), extra_env=extra,
                         log_dir=log_dir)

    def url(self, timeout: float = 30.0) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"hive mcp --http exited {self.proc.returncode}:\n{self.log()}")
            match = re.search(r"serving (http://\S+/mcp)", self.log())
            return match.group(1) if match else None

        return wait_until(found, timeout=timeout, what="hive mcp --http to listen")


@asynccontextmanager
async def http_session(url: str, token: str | None) -> AsyncIterator[Client]:
    from mcp_types import Implementation

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, client_info=Implementation(**CLIENT_INFO), read_timeout_seconds=120) as client:
            yield client


async def call_then_cancel(client: Client, name: str, arguments: dict[str, Any], timeout: float = 30,
                           pattern: str = r"job (\w+):") -> str:
    """Call a long tool, cancel the call (``notifications/cancelled``) at the first progress message matching
    ``pattern``; answers the pattern's group (by default the map job's id)."""
    queued = anyio.Event()
    job: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        match = re.search(pattern, message or "")
        if match and not job:
            job.append(match.group(1))
            queued.set()

    async with anyio.create_task_group() as group:

        async def call() -> None:
            await client.call_tool(name, arguments, progress_callback=on_progress)

        group.start_soon(call)
        with anyio.fail_after(timeout):
            await queued.wait()
        group.cancel_scope.cancel()
    return job[0]


async def job_tasks(hive: Hive, job_id: str, status: TaskStatus) -> list[TaskMessage]:
    """The tasks of one map job that are in ``status`` now (from the status index)."""
    index = hive.kernel.keys.status_index(status)
    ids = [i.decode() if isinstance(i, bytes) else i for i in await hive.broker.redis.zrange(index, 0, -1)]
    return [m for m in await hive.broker.get_tasks(ids) if m is not None and m.job_id == job_id]


def structured(result: Any) -> Any:
    """A tool result's structured content; fails with the error text when the call was refused."""
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result
    return "\n".join(getattr(block, "text", "") for block in result.content)


def error_json(result: Any) -> dict[str, Any]:
    """The seed's ``{"error", "error_type"}`` of a refused call (the SDK puts "Error executing tool NAME: " first)."""
    text = error_text(result)
    assert text.startswith("Error executing tool "), text
    answer: dict[str, Any] = json.loads(text[text.index("{"):])
    return answer

