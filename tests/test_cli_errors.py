"""User mistakes on the ``hive`` command line: one clear line, a non-zero exit, no traceback, nothing enqueued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from hive_framework import HiveConfig
from hive_framework.cli import cli

UNREACHABLE = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1: refused at once


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads ./.env and ./hive.toml: run in an empty directory.
    monkeypatch.chdir(tmp_path)


def hive(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process with only the given HIVE_*/REDIS_* variables."""
    clean: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("HIVE_", "REDIS_")) or k == "ENABLE_HIVE"
    }
    clean.update(env or {})
    return CliRunner().invoke(cli, list(args), env=clean)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit non-zero with exactly one 'Error: ...' line on stderr, no traceback, and the fragments in it."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- mistakes caught before Redis is contacted ----------------------------------------------------------


def test_bad_payload_json() -> None:
    # Given a payload that is not JSON (the shell ate the quotes)
    result = hive("submit", "echo", "--payload", "{x: 1}", env={"REDIS_URL": UNREACHABLE})
    # Then one line names the option and the JSON problem (before any connection attempt)
    assert_one_line_error(result, "--payload", "not valid JSON")


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "3", "null"])
def test_payload_that_is_not_an_object(payload: str) -> None:
    result = hive("submit", "echo", "--payload", payload, env={"REDIS_URL": UNREACHABLE})
    assert_one_line_error(result, "--payload", "must be a JSON object")


def test_bad_broadcast_data_is_the_same_one_line() -> None:
    result = hive("broadcast", "PING", "--data", "nope", env={"REDIS_URL": UNREACHABLE})
    assert_one_line_error(result, "--data", "not valid JSON")


def test_unknown_hive_env_var() -> None:
    # Given a misspelled HIVE_* variable
    result = hive("queues", env={"HIVE_TASK_TIMOUT": "5"})
    # Then one line names it
    assert_one_line_error(result, "HIVE_TASK_TIMOUT", "unknown setting HIVE_TASK_TIMOUT ")


@pytest.mark.parametrize(("name", "value"), [("REDIS_PORT", "six"), ("HIVE_MAX_RETRIES", "-2"),
                                             ("REDIS_URL", "http://localhost:6379"), ("REDIS_URL", "redis://h:0x/0")])
def test_bad_setting_values(name: str, value: str) -> None:
    result = hive("queues", env={name: value})
    assert_one_line_error(result, name)


def test_unreachable_redis_names_the_url_with_the_password_masked() -> None:
    # Given a Redis URL where nothing answers
    result = hive("queues", env={"REDIS_URL": UNREACHABLE})
    # Then one line says so, with the URL but not the password
    line = assert_one_line_error(result, "no Redis answers at", "127.0.0.1:1")
    assert "hunter2" not in result.output and "***" in line


def test_the_redis_url_option_is_checked_too() -> None:
    result = hive("--redis-url", "localhost:6379", "queues")
    assert_one_line_error(result, "REDIS_URL")


def test_missing_app_module() -> None:
    result = hive("--app", "no_such_app_module_q", "plugins")
    assert_one_line_error(result, "no_such_app_module_q")


def test_app_module_with_a_misspelled_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an --app module implementing a hook that does not exist
    (tmp_path / "typo_app.py").write_text(
        "from hive_framework import hookimpl\n\n@hookimpl\ndef on_brodcast(message):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # Then start-up fails in one line naming the hook
    result = hive("--app", "typo_app", "plugins")
    assert_one_line_error(result, "on_brodcast")


def test_disabling_an_essential_plugin() -> None:
    result = hive("plugins", env={"HIVE_DISABLE_PLUGINS": "tasks"})
    assert_one_line_error(result, "'tasks' is essential")


def test_disabled_hive_refuses_to_run() -> None:
    result = hive("queues", env={"ENABLE_HIVE": "false"})
    assert_one_line_error(result, "ENABLE_HIVE=false")


def test_bad_config_file_option(tmp_path: Path) -> None:
    bad = tmp_path / "hive.toml"
    bad.write_text("[hive]\nconcurency = 4\n")
    result = hive("--config", str(bad), "queues")
    assert_one_line_error(result, "concurency")


# --- mistakes found with Redis: nothing may be enqueued -------------------------------------------------


def snapshot(config: HiveConfig) -> tuple[Any, ...]:
    """Every key of the test namespace and both queue lengths."""
    client = redis.Redis.from_url(config.redis_url)
    try:
        keys = sorted(client.scan_iter(match=f"{config.key_prefix}:*", count=1000))
        depth = {b"zset": client.zcard, b"stream": client.xlen, b"none": lambda _key: 0}
        queues = [f"{q}:type:{t}" for q in (config.high_priority_queue, config.background_queue)
                  for t in ("echo", "no_such_type")]
        return keys, *(depth[client.type(q)](q) for q in queues)
    finally:
        client.close()


@pytest.fixture
def hive_env(hive_config: HiveConfig) -> dict[str, str]:
    return {**hive_config.to_env(), "HIVE_APP": "tests.apps.basic"}


@pytest.fixture
def nothing_enqueued(hive_config: HiveConfig, hive_env: dict[str, str]) -> Callable[[], None]:
    """Call it at the end of a test: fails if the namespace changed since the test started."""
    before = snapshot(hive_config)
    stats_before = json.loads(hive("queues", env=hive_env).stdout)

    def check() -> None:
        assert snapshot(hive_config) == before
        assert json.loads(hive("queues", env=hive_env).stdout) == stats_before

    return check


def test_unknown_task_type_lists_the_known_ones(hive_env: dict[str, str], nothing_enqueued: Callable[[], None]) -> None:
    # Given a typo in the task type
    result = hive("submit", "ecko", "--payload", "{}", env=hive_env)
    # Then one line names it and the known types, and nothing was enqueued
    assert_one_line_error(result, "unknown task type 'ecko'", "echo")
    nothing_enqueued()


@pytest.mark.parametrize("priority", ["urgent", "11", "-1", "5.5", "²"])
def test_bad_priority(hive_env: dict[str, str], nothing_enqueued: Callable[[], None], priority: str) -> None:
    result = hive("submit", "echo", "--priority", priority, env=hive_env)
    assert_one_line_error(result, "bad priority")
    nothing_enqueued()


def test_payload_over_the_size_limit(hive_env: dict[str, str], nothing_enqueued: Callable[[], None]) -> None:
    # Given a payload limit of 64 bytes and a bigger payload
    env = {**hive_env, "HIVE_MAX_PAYLOAD_BYTES": "64"}
    result = hive("submit", "echo", "--payload", json.dumps({"blob": "x" * 100}), env=env)
    # Then one line gives the size and the limit, and nothing was enqueued
    assert_one_line_error(result, "over the limit of 64", "HIVE_MAX_PAYLOAD_BYTES")
    nothing_enqueued()


def test_unknown_task_id(hive_env: dict[str, str]) -> None:
    result = hive("task", "no-such-task", env=hive_env)
    assert_one_line_error(result, "no task with id 'no-such-task'")


def test_reusing_a_task_id_is_refused(hive_env: dict[str, str], hive_config: HiveConfig) -> None:
    # Given a task submitted with an explicit id
    first = hive("submit", "echo", "--task-id", "fixed-id", env=hive_env)
    assert first.exit_code == 0, first.output
    after_first = snapshot(hive_config)
    # When the same id is submitted again, Then it is refused and nothing more is stored
    again = hive("submit", "echo", "--task-id", "fixed-id", env=hive_env)
    assert_one_line_error(again, "already exists")
    assert snapshot(hive_config) == after_first


def test_a_good_submit_does_enqueue(hive_env: dict[str, str], hive_config: HiveConfig) -> None:
    # The control for the tests above: the snapshot does see an enqueued task
    before = snapshot(hive_config)
    result = hive("submit", "echo", "--payload", '{"x": 1}', env=hive_env)
    assert result.exit_code == 0, result.output
    assert snapshot(hive_config) != before
    assert json.loads(hive("queues", env=hive_env).stdout)["tasks_pending"] == 1


# --- the real process: python -m hive_framework ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["queues"], {"HIVE_BOGUS": "1"}, "HIVE_BOGUS"),
        (["queues"], {"REDIS_URL": UNREACHABLE}, "no Redis answers"),
        (["submit", "echo", "--payload", "[1]"], {"REDIS_URL": UNREACHABLE}, "must be a JSON object"),
    ],
    ids=["unknown-env", "unreachable", "payload-list"],
)
def test_real_process_prints_one_line_and_no_traceback(args: list[str], env: dict[str, str], fragment: str) -> None:
    # Given the installed entry point run as a user would
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    proc = subprocess.run([sys.executable, "-m", "hive_framework", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    # Then it exits non-zero with one line on stderr and nothing on stdout
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], proc.stderr
    assert proc.stdout == ""


def test_deeply_nested_payload_is_one_line() -> None:
    # Given a payload nested deeper than Python's JSON reader can go
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    result = hive("submit", "echo", "--payload", deep, env={"REDIS_URL": UNREACHABLE})
    # Then one line says so (no RecursionError traceback)
    assert_one_line_error(result, "--payload", "nested too deeply")


@pytest.mark.parametrize("source", ["[" * 100_000 + "]" * 100_000, "1\n" + "[" * 100_000 + "]" * 100_000])
def test_deeply_nested_map_input_is_one_line(tmp_path: Path, source: str) -> None:
    # Given map input (an array, or one item per line) nested too deeply to read
    path = tmp_path / "items.json"
    path.write_text(source)
    result = hive("map", "echo", str(path), env={"REDIS_URL": UNREACHABLE})
    # Then one line says so
    assert_one_line_error(result, "nested too deeply")
