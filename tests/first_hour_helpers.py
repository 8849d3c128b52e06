"""Helpers for the new-user suites (README blocks, mistakes as data): the ``hive`` script as a user runs it,
a Redis that wants a password, and what a namespace holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis

from hive_framework import HiveConfig
from hive_framework.embedded import free_port, wait_for_redis

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The console script pip installed beside this interpreter: what a user types.
HIVE = str(Path(sys.executable).with_name("hive"))

MYAPP_TASKS = '''from hive_framework import TaskContext, task


@task("resize", priority="high_priority", timeout=30, max_retries=2)
async def resize(payload: dict) -> dict:
    return {"path": payload["path"], "size": [640, 480]}


@task
def web_scraping(payload: dict, context: TaskContext) -> dict:
    return {"url": payload["url"], "status": 200}
'''


def make_myapp(folder: Path, tasks: str = MYAPP_TASKS) -> Path:
    """``folder/myapp/tasks.py`` as the README's quick start has it; returns ``folder``."""
    package = folder / "myapp"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(tasks)
    return folder


def user_env(config: HiveConfig | None = None, **extra: str) -> dict[str, str]:
    """A user's shell: no HIVE_*/REDIS_* of the test run, no PYTHONPATH; ``config``'s settings when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_")) and k != "PYTHONPATH"}
    if config is not None:
        env.update(config.to_env())
    env.update(extra)
    return env


def run_hive(*args: str, env: Mapping[str, str], cwd: Path, timeout: float = 90,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HIVE, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=stdin)


@contextmanager
def password_redis(password: str = "right-horse-battery") -> Iterator[str]:
    """A private ``redis-server`` with ``requirepass``; yields its URL *without* the password."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hive-auth-redis-") as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder, "--requirepass", password],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_redis(f"redis://:{password}@127.0.0.1:{port}/0")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def stored_work(config: HiveConfig) -> list[str]:
    """Keys holding tasks, statuses or jobs in ``config``'s namespace (empty: nothing was enqueued)."""
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        found: list[str] = []
        for pattern in ("task:*", "status:*", "job:*", "jobs", "deps:*", "unrouted", "dead"):
            found += [k.decode() for k in client.scan_iter(f"{config.key_prefix}:{pattern}")]
        return sorted(found)
    finally:
        client.close()


def error_lines(stderr: str) -> list[str]:
    """stderr's non-empty lines."""
    return [line for line in stderr.splitlines() if line.strip()]
