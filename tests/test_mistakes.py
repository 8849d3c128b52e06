"""Mistakes as data: what a new user gets wrong, and what ``hive`` answers.

Each row is one mistake, made as a user makes it (the ``hive`` script, from a folder holding ``myapp/``, with
a shell's environment). Every answer must be: one line on stderr that says what to do next, the exit status
README's "Exit codes" table gives that kind of mistake, and nothing half-written in Redis (no task, status
or job record in the namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import redis

from hive_framework import HiveConfig
from hive_framework.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOPERM, EXIT_UNAVAILABLE
from hive_framework.testing import wait_until

from .first_hour_helpers import HIVE, error_lines, make_myapp, password_redis, run_hive, stored_work, user_env

pytestmark = pytest.mark.redis

DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


@attrs.frozen
class Mistake:
    id: str
    argv: tuple[str, ...]
    exit_code: int
    says: tuple[str, ...]  # fragments of the one line: what went wrong and what to do
    redis: str = "namespace"  # namespace | down | wrong-password | no-password
    env: tuple[tuple[str, str], ...] = ()
    spore: bool = False  # one spore process serving myapp.tasks is online


MISTAKES = [
    Mistake("unknown task type", ("submit", "resise", "--app", "myapp.tasks"), EXIT_FAILED,
            ("unknown task type 'resise'", "known task types", "resize", "--app MODULE", "nothing was submitted")),
    Mistake("payload is not JSON", ("submit", "resize", "-p", "{path: a.png}"), EXIT_FAILED,
            ("--payload is not valid JSON", "in single quotes")),
    Mistake("payload is not an object", ("submit", "resize", "-p", '["a.png"]'), EXIT_FAILED,
            ("--payload must be a JSON object", '{"url"')),
    Mistake("Redis down", ("queues",), EXIT_UNAVAILABLE,
            ("no Redis answers at redis://127.0.0.1:1/0", "start one, set REDIS_URL, or run 'hive up'"),
            redis="down"),
    Mistake("Redis down, submit", ("submit", "resize", "--app", "myapp.tasks"), EXIT_UNAVAILABLE,
            ("no Redis answers",), redis="down"),
    Mistake("wrong password", ("queues",), EXIT_NOPERM,
            ("Redis refused the password (AUTH)", "set the right one in REDIS_URL"), redis="wrong-password"),
    Mistake("no password", ("submit", "resize", "--app", "myapp.tasks"), EXIT_NOPERM,
            ("Redis refused the password (AUTH)", "REDIS_PASSWORD"), redis="no-password"),
    Mistake("hive up, wrong password", ("up", "-n", "1", "--no-nexus"), EXIT_NOPERM,
            ("Redis refused the password (AUTH)",), redis="wrong-password"),
    Mistake("app module with a syntax error", ("submit", "resize", "--app", "myapp.broken"), EXIT_CONFIG,
            ("app module 'myapp.broken' has a syntax error at", "broken.py:4", "was never closed", "fix it")),
    Mistake("app module importing a missing package", ("spore", "--app", "myapp.needs"), EXIT_CONFIG,
            ("imports 'no_such_dependency'", "needs.py:1", "install it")),
    Mistake("app module not found", ("spore", "--app", "yourapp.tasks"), EXIT_CONFIG,
            ("cannot import app module 'yourapp.tasks'", "current directory", "PYTHONPATH")),
    Mistake("hive up with an app module not found", ("up", "-n", "1", "--app", "myap.tasks"), EXIT_CONFIG,
            ("cannot import app module 'myap.tasks'", "current directory")),
    Mistake("misspelled setting", ("queues",), EXIT_CONFIG, ("HIVE_TASK_TIMOUT", "did you mean HIVE_TASK_TIMEOUT?"),
            env=(("HIVE_TASK_TIMOUT", "5"),)),
    # a plugin's command names the bad setting too, rather than vanishing ("No such command 'scan'")
    Mistake("misspelled setting, plugin command", ("scan", "."), EXIT_CONFIG, ("HIVE_TASK_TIMOUT",),
            env=(("HIVE_TASK_TIMOUT", "5"),)),
    Mistake("unknown broadcast command", ("broadcast", "FOO"), EXIT_FAILED,
            ("1 of 1 spore(s) refused FOO", "unknown command 'FOO'", "PING, PAUSE"), spore=True),
    Mistake("broadcast with no spore online", ("broadcast", "PAUS"), EXIT_FAILED,
            ("no spore online to receive PAUS", "nothing was sent", "hive up")),
    Mistake("unknown reducer", ("map", "resize", "paths.txt", "--reducer", "summ", "--app", "myapp.tasks"),
            EXIT_FAILED, ("unknown reducer 'summ'", "sum", "nothing was submitted")),
    Mistake("scan of a missing path", ("scan", "no-such-folder"), 2,  # the scan's documented usage-error code
            ("no such file or folder: no-such-folder", "hive scan .")),
]


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = make_myapp(tmp_path / "project")
    (folder / "myapp" / "broken.py").write_text("from hive_framework import task\n\n@task\ndef oops(payload:\n")
    (folder / "myapp" / "needs.py").write_text("import no_such_dependency  # noqa\n")
    (folder / "paths.txt").write_text("a.png\nb.png\n")
    return folder


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[str]:
    with password_redis("right-horse-battery") as url:
        yield url


def redis_url_for(kind: str, config: HiveConfig, auth_url: str) -> str:
    return {
        "namespace": config.effective_redis_url(),
        "down": DOWN,
        "wrong-password": auth_url.replace("redis://", "redis://:wrong-horse@"),
        "no-password": auth_url,
    }[kind]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_a_mistake_gets_one_line_a_documented_exit_code_and_stores_nothing(
    mistake: Mistake, hive_config: HiveConfig, user_folder: Path, auth_redis: str, spore_processes
) -> None:
    # Given a user's shell in the folder holding myapp/ (and, for some rows, a spore online)
    env = user_env(hive_config, REDIS_URL=redis_url_for(mistake.redis, hive_config, auth_redis), **dict(mistake.env))
    if mistake.spore:
        spore_processes("mistake-spore", apps=("tests.apps.basic",))
        wait_until(lambda: online_nodes(hive_config) == 1, timeout=60, what="the spore online")

    # When the user makes the mistake
    done = run_hive(*mistake.argv, env=env, cwd=user_folder)

    # Then: one line on stderr, naming the problem and the next step, no traceback
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in mistake.says:
        assert fragment in lines[0], lines[0]
    # and the exit status documented for that kind of mistake
    assert done.returncode == mistake.exit_code, (done.returncode, done.stderr)
    # and nothing half-written: no task, status or job record
    assert stored_work(hive_config) == []


def test_every_exit_code_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in {m.exit_code for m in MISTAKES} | {EXIT_INTERRUPTED, 0, 2}:
        assert f"| {code} |" in section, code


# --- Ctrl-C during each long command --------------------------------------------------------------------


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def start(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([HIVE, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def online_nodes(config: HiveConfig) -> int:
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        return int(client.hlen(f"{config.key_prefix}:nodeinfo"))
    finally:
        client.close()


def stop_group(proc: subprocess.Popen[str]) -> None:
    """Leave nothing running, whatever the test found: SIGKILL to the command's whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pending_tasks(config: HiveConfig) -> int:
    return len([k for k in stored_work(config) if k.startswith(f"{config.key_prefix}:task:")])


@pytest.mark.parametrize("argv", [["submit", "resize", "-p", '{"path": "a.png"}', "--wait"],
                                  ["map", "resize", "paths.txt"]], ids=["submit --wait", "map"])
def test_ctrl_c_while_waiting_is_one_line_exit_130_and_the_tasks_stay_queued(
    argv: list[str], hive_config: HiveConfig, user_folder: Path
) -> None:
    # Given a command waiting for tasks no spore runs yet
    proc = start(["--app", "myapp.tasks", *argv], user_env(hive_config), user_folder)
    try:
        wait_until(lambda: pending_tasks(hive_config) > 0, timeout=60, what="the task(s) enqueued")
        # When the user presses Ctrl-C
        code, stderr = interrupt(proc)
    finally:
        stop_group(proc)
    # Then one line says what happened and where the tasks are; exit status 130
    lines = [line for line in error_lines(stderr) if line.startswith("Error:")]
    assert len(lines) == 1 and "interrupted (Ctrl-C)" in lines[0] and "hive status" in lines[0], stderr
    assert "Traceback" not in stderr
    assert code == EXIT_INTERRUPTED, stderr
    # and the submitted tasks are still there, whole
    assert pending_tasks(hive_config) > 0


def nexus_leads(config: HiveConfig) -> bool:
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        return bool(client.exists(f"{config.key_prefix}:nexus:leader"))
    finally:
        client.close()


@pytest.mark.parametrize(
    "argv",
    [["spore", "--app", "myapp.tasks"], ["nexus", "--no-monitor"],
     ["up", "-n", "1", "--app", "myapp.tasks", "--no-monitor"]],
    ids=["spore", "nexus", "up"],
)
def test_ctrl_c_stops_a_long_running_process_cleanly(argv: list[str], hive_config: HiveConfig,
                                                     user_folder: Path) -> None:
    # Given a spore, a nexus or `hive up` (a spore and a nexus) running
    proc = start(argv, user_env(hive_config), user_folder)
    try:
        if argv[0] in ("spore", "up"):
            wait_until(lambda: online_nodes(hive_config) == 1, timeout=60, what="the spore online")
        if argv[0] in ("nexus", "up"):
            wait_until(lambda: nexus_leads(hive_config), timeout=60, what="the nexus leading")
        # When Ctrl-C arrives
        code, stderr = interrupt(proc)
    finally:
        stop_group(proc)
    # Then it stops on its own, exit 0, no traceback, and its spore is gone from the cluster view
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert online_nodes(hive_config) == 0
