"""A new user's first hour (issue 16): the README's commands work as written, from the folder holding ``myapp/``.

The ``hive`` script runs as a user runs it (no PYTHONPATH, a shell's environment); spores are real processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from hive_framework import Hive, HiveConfig, Kernel, PluginError, hookimpl
from hive_framework.logfmt import JsonFormatter
from hive_framework.spore import HandlerPool
from hive_framework.testing import async_wait_until, wait_until

from .first_hour_helpers import HIVE, error_lines, make_myapp, run_hive, user_env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_myapp(tmp_path / "project")


# --- point 1: the current directory is on the import path ------------------------------------------------


def test_app_module_in_the_current_directory_is_found(project: Path) -> None:
    # Given the folder holding myapp/ and no PYTHONPATH
    # When `hive plugins --app myapp.tasks` runs there (no Redis needed)
    done = run_hive("plugins", "--app", "myapp.tasks", env=user_env(), cwd=project)
    # Then the app's task types are loaded
    assert done.returncode == 0, done.stderr
    apps = {row["name"]: row for row in json.loads(done.stdout)}
    assert apps["app:myapp.tasks"]["task_types"] == ["resize", "web_scraping"]


# --- point 3: --app after the subcommand, and the task type's declared options ---------------------------


def read_task(config: HiveConfig, task_id: str) -> dict[str, object]:
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        raw = client.get(f"{config.key_prefix}:task:{task_id}")
    finally:
        client.close()
    assert raw is not None
    return dict(json.loads(raw))


@pytest.mark.redis
@pytest.mark.parametrize(
    ("argv", "extra_env"),
    [(["submit", "resize", "--app", "myapp.tasks"], {}),
     (["--app", "myapp.tasks", "submit", "resize"], {}),
     (["submit", "resize"], {"HIVE_APP": "myapp.tasks"})],
    ids=["--app after the command", "--app before it", "HIVE_APP"],
)
def test_submit_applies_the_declared_options_wherever_the_app_is_named(
    argv: list[str], extra_env: dict[str, str], project: Path, hive_config: HiveConfig
) -> None:
    # When resize (declared high_priority, timeout=30, max_retries=2) is submitted naming the app anywhere
    done = run_hive(*argv, "-p", '{"path": "a.png"}', env=user_env(hive_config, **extra_env), cwd=project)
    # Then the stored task carries the declared options, not the global defaults
    assert done.returncode == 0, done.stderr
    record = read_task(hive_config, done.stdout.strip())
    assert (record["priority"], record["timeout"], record["max_retries"]) == (10, 30.0, 2)


def test_every_subcommand_takes_app() -> None:
    from hive_framework.cli import cli

    def walk(group: object, path: str) -> list[str]:
        import click

        missing = []
        assert isinstance(group, click.Group)
        for name, command in group.commands.items():
            if not any("--app" in getattr(p, "opts", ()) for p in command.params):
                missing.append(f"{path} {name}")
            if isinstance(command, click.Group):
                missing += walk(command, f"{path} {name}")
        return missing

    assert walk(cli, "hive") == []


# --- point 2: the quick start's client finds the spores' Redis --------------------------------------------


def test_hive_connect_without_a_url_uses_redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith(("HIVE_", "REDIS_"))]:  # e.g. HIVE_CONFIG left by a CLI test
        monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", "redis://redis.example.internal:6380/2")
    client = Hive.connect()
    assert client.config.effective_redis_url() == "redis://redis.example.internal:6380/2"


# --- point 4: Ctrl-C on `hive up` with its private Redis -------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_on_hive_up_stops_the_spores_before_its_private_redis(project: Path) -> None:
    # Given `hive up` with a private redis-server (nothing configured) and a spore, in its own terminal group,
    # running a task longer than the spores' grace period
    (project / "myapp" / "slow.py").write_text(
        "import asyncio\n\nfrom hive_framework import task\n\n\n@task\nasync def slow(payload: dict) -> str:\n"
        "    await asyncio.sleep(120)\n    return 'done'\n"
    )
    env = user_env(PYTHONUNBUFFERED="1", HIVE_SHUTDOWN_GRACE="1")
    proc = subprocess.Popen(
        [HIVE, "up", "--app", "myapp.slow", "-n", "1", "--no-nexus", "--embedded", "always"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    server: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "running" not in (line := proc.stdout.readline()):
            assert line, "hive up ended early"
        url = line.split("REDIS_URL=", 1)[1].split()[0]
        server += [c for c in psutil.Process(proc.pid).children() if c.name().startswith("redis-server")]
        assert len(server) == 1
        # The private Redis is outside the terminal's process group: Ctrl-C does not reach it
        assert os.getpgid(server[0].pid) != os.getpgid(proc.pid)
        wait_until(lambda: redis.Redis.from_url(url).hlen("venom:nodeinfo") == 1, timeout=60, what="spore online")
        submitted = run_hive("submit", "slow", env={**env, "REDIS_URL": url}, cwd=project)
        assert submitted.returncode == 0, submitted.stderr
        wait_until(lambda: redis.Redis.from_url(url).zcard("venom:status:running") == 1, timeout=60,
                   what="the task running")
        # When Ctrl-C reaches the group (hive up and its spores)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        # Whatever happened, leave nothing running: the group (hive up, its spores) and the private Redis.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for leftover in server:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
    # Then everything stops cleanly: the spore hands its task back while Redis still answers, exit 0,
    # no traceback, no heartbeat or connection errors, and the Redis is gone last
    assert proc.returncode == 0, stderr
    assert "handing 1 unfinished task(s) back to the queue" in stderr, stderr
    assert "Traceback" not in stderr and "heartbeat failed" not in stderr and "ERROR" not in stderr, stderr
    assert not server[0].is_running()


# --- point 8: logs, waiting with no spore, the blocked-handler warning -----------------------------------


@pytest.mark.redis
async def test_a_spore_logs_one_line_per_task_received_and_finished(
    hive_config: HiveConfig, run_spore, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = Kernel(hive_config.evolve(log_tasks=True), apps=["tests.apps.basic"], load_entry_points=False)
    await run_spore(kernel, name="logger-1", concurrency=2)
    async with Hive(kernel) as client:
        with caplog.at_level(logging.INFO, logger="hive.tasks"):
            task_id = await client.submit("add", {"a": 1, "b": 2})
            assert await client.result(task_id, timeout=30) == 3

            async def logged() -> bool:
                return len([r for r in caplog.records if r.name == "hive.tasks"]) >= 2

            await async_wait_until(logged, timeout=10)
    received, finished = [r for r in caplog.records if r.name == "hive.tasks"][:2]
    assert received.getMessage() == f"task received add {task_id} on logger-1, attempt 1"
    assert finished.getMessage().startswith(f"task finished add {task_id} on logger-1, attempt 1, ")
    assert finished.getMessage().endswith(", completed")
    fields = json.loads(JsonFormatter().format(finished))
    assert fields["task_type"] == "add" and fields["task_id"] == task_id and fields["node"] == "logger-1"
    assert fields["attempt"] == 1 and fields["outcome"] == "completed" and fields["duration_s"] >= 0


@pytest.mark.redis
async def test_task_lines_are_off_by_default(hive_config: HiveConfig, run_spore,
                                             caplog: pytest.LogCaptureFixture) -> None:
    kernel = Kernel(hive_config, apps=["tests.apps.basic"], load_entry_points=False)
    await run_spore(kernel, name="quiet-1")
    async with Hive(kernel) as client:
        with caplog.at_level(logging.INFO):
            assert await client.run("add", {"a": 2, "b": 2}, timeout=30) == 4
    assert [r for r in caplog.records if r.name == "hive.tasks"] == []


@pytest.mark.redis
def test_submit_wait_with_no_spore_online_says_so(project: Path, hive_config: HiveConfig) -> None:
    done = run_hive("submit", "resize", "--app", "myapp.tasks", "-p", '{"path": "a.png"}', "--wait",
                    "--wait-timeout", "1", env=user_env(hive_config), cwd=project)
    lines = error_lines(done.stderr)
    assert "no spore online serves 'resize'" in lines[0] and "hive spore --app MODULE" in lines[0], done.stderr


def test_the_handler_pool_counts_running_handlers_not_idle_threads() -> None:
    pool = HandlerPool(max_workers=4, thread_name_prefix="hive-task-test")
    release = threading.Event()
    try:
        # Given handlers that ran and returned: their threads idle in the pool
        assert [pool.submit(lambda i=i: i).result() for i in range(4)] == [0, 1, 2, 3]
        assert pool.busy == 0
        # When one handler blocks
        pool.submit(release.wait)
        wait_until(lambda: pool.busy == 1, timeout=10)
        # Then exactly that one counts
        assert pool.busy == 1
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert pool.busy == 0


# --- point 10: a broken plugin, a misspelled hook ---------------------------------------------------------


def broken_distribution(folder: Path) -> Path:
    """A distribution whose entry point raises ImportError, importable from ``folder``."""
    folder.mkdir(parents=True)
    (folder / "hive_plugin_broken.py").write_text("raise ImportError('cannot import name Gone from somewhere')\n")
    info = folder / "hive_plugin_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hive-plugin-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hive_framework.plugins]\nbroken = hive_plugin_broken\n")
    return folder


def test_a_broken_plugin_leaves_the_other_plugins_commands_working(tmp_path: Path) -> None:
    site = broken_distribution(tmp_path / "site")
    env = user_env(PYTHONPATH=str(site))
    # When the CLI starts with a plugin whose entry point raises ImportError
    helped = run_hive("--help", env=env, cwd=tmp_path)
    # Then the healthy plugins' commands are still there, and one line names the fix
    assert helped.returncode == 0, helped.stderr
    assert " scan " in helped.stdout
    lines = error_lines(helped.stderr)
    assert len(lines) == 1 and "plugin 'broken' failed to load: ImportError" in lines[0], helped.stderr
    assert "HIVE_DISABLE_PLUGINS=broken" in lines[0]
    listed = run_hive("plugins", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "security_scan" in {row["name"] for row in json.loads(listed.stdout)}
    # and the named fix works: no warning at all
    quiet = run_hive("--help", env={**env, "HIVE_DISABLE_PLUGINS": "broken"}, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_misspelled_hook_gets_did_you_mean() -> None:
    class Misspelled:
        @hookimpl
        def on_brodcast(self, message: object) -> None:
            return None

    kernel = Kernel(HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None), load_entry_points=False)
    with pytest.raises(PluginError, match=r"unknown hook 'on_brodcast'.*did you mean 'on_broadcast'\?"):
        kernel.register_plugin(Misspelled(), name="typo")


def test_the_hive_script_is_beside_this_interpreter() -> None:
    assert Path(HIVE).exists(), f"{HIVE}: install the package (pip install -e .) into {sys.prefix}"


@pytest.mark.slow
def test_hive_demo_ends_without_a_blocked_handler_warning(tmp_path: Path) -> None:
    # Given a few text files and no Redis configured (the demo starts a private one)
    for index in range(3):
        (tmp_path / f"doc{index}.txt").write_text("the hive counts words " * (index + 1))
    # When `hive demo` counts them on one spore (its handler is a sync function run in the spore's threads)
    done = run_hive("demo", str(tmp_path), "-n", "1", env=user_env(), cwd=tmp_path, timeout=180)
    # Then every file is counted and no spore claims a handler is still blocked
    assert done.returncode == 0, done.stderr
    assert "3 of 3 files" in done.stdout
    assert "still blocked" not in done.stdout + done.stderr
