"""A task submitted by one process runs in a spore process and its result is read by a third."""

from __future__ import annotations

import json
import subprocess
import sys

from hive_framework import HiveConfig
from hive_framework.testing import wait_until


def hive_cli(config: HiveConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **config.to_env(), "HIVE_APP": "tests.apps.basic", "PYTHONPATH": "."}
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_submit_run_and_read_across_three_processes(hive_config, spore_processes):
    # Given a spore in its own process
    spore = spore_processes("worker-1", apps=("tests.apps.basic",))
    # When a second process submits a task
    submitted = hive_cli(hive_config, "submit", "echo", "--payload", '{"x": 1}')
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()

    # Then a third process reads the completed result written by the spore
    def finished():
        shown = hive_cli(hive_config, "task", task_id)
        data = json.loads(shown.stdout)
        return data if data["status"] == "completed" else None

    data = wait_until(finished, timeout=30, what="the task to complete")
    assert data["result"]["payload"] == {"x": 1}
    assert data["result"]["node"] == "worker-1"
    assert data["result"]["pid"] == spore.pid
    assert data["attempt"] == 1
