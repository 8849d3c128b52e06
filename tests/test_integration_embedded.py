"""The embedded fallback: ``hive up --embedded fakeredis`` serves tasks with no Redis server at all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from hive_framework import HiveConfig, TaskStatus
from hive_framework.hive import Hive
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, REPO_ROOT

pytestmark = pytest.mark.slow


def start_hive_up(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``hive up ARGS`` in a clean directory and environment (no HIVE_*/REDIS_*), output to two files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        up = subprocess.Popen(
            [sys.executable, "-m", "hive_framework", "up", *args], cwd=tmp_path, env=env, stdout=out, stderr=err
        )
    return up, out_path, err_path


async def test_hive_up_with_embedded_fakeredis_serves_a_task_and_stops_cleanly(tmp_path):
    # Given `hive up` with an in-process fakeredis and one spore, in a clean directory and environment
    up, out_path, err_path = start_hive_up(tmp_path, "--embedded", "fakeredis", "--spores", "1", "--app", BASIC)
    try:
        async def printed_url() -> str | None:
            found = re.search(r"REDIS_URL=(redis://\S+)", out_path.read_text())
            return found.group(1) if found else None

        url = await async_wait_until(printed_url, timeout=30, what="hive up to print its REDIS_URL")
        assert "fakeredis" in out_path.read_text()

        # When a client submits a task through that URL
        config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None)
        async with Hive.connect(url, apps=[BASIC], config=config) as hive:
            task_id = await hive.submit("echo", {"via": "fakeredis"})
            done = await hive.wait(task_id, timeout=30)

        # Then the embedded hive's spore ran it (ARQ's INFO call, which fakeredis lacks, was skipped)
        assert done.status == TaskStatus.COMPLETED, (done.error, err_path.read_text()[-3000:])
        assert done.result["payload"] == {"via": "fakeredis"}
        assert done.result["node"].startswith("local-1-")
        spore_pid = done.result["pid"]
        assert spore_pid != up.pid

        # When `hive up` gets Ctrl-C (SIGINT)
        up.send_signal(signal.SIGINT)

        # Then it stops its spore and exits cleanly
        async def exited() -> bool:
            return up.poll() is not None

        await async_wait_until(exited, timeout=30, what="hive up to exit")
        assert up.returncode == 0, err_path.read_text()[-3000:]
        assert "stopping spores" in out_path.read_text()
        assert not psutil.pid_exists(spore_pid), "the spore outlived hive up"
        errors = err_path.read_text()
        assert "Traceback" not in errors, errors[-3000:]
        assert "spore local-1-" in errors and "stopped" in errors
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


async def test_hive_up_stops_cleanly_on_sigterm(tmp_path):
    # Given `hive up` with an in-process fakeredis and one spore
    up, _, err_path = start_hive_up(tmp_path, "--embedded", "fakeredis", "--spores", "1")
    try:
        async def spore_ready() -> bool:
            return "ready:" in err_path.read_text()

        await async_wait_until(spore_ready, timeout=30, what="the spore of hive up to be ready")
        children = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
        assert children, "hive up started no spore process"

        # When it gets SIGTERM (as from a process manager)
        up.send_signal(signal.SIGTERM)

        # Then it exits cleanly and takes its spore with it
        async def exited() -> bool:
            return up.poll() is not None

        await async_wait_until(exited, timeout=30, what="hive up to exit")
        assert up.returncode == 0, err_path.read_text()[-3000:]
        assert not [pid for pid in children if psutil.pid_exists(pid)], "a spore outlived hive up"
        assert "Traceback" not in err_path.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
