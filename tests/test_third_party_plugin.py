"""A third-party plugin, built and installed as a real distribution, found through its entry point alone.

``tests/plugin_dist/hive-plugin-example`` is a separate project (its own pyproject.toml). It is installed
with pip into a temporary target directory (unless it is already installed), and processes that have that
directory on PYTHONPATH see it: no hive code, no --app flag, nothing but the entry point.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hive_framework import Hive, HiveConfig
from hive_framework.testing import async_wait_until

DIST = Path(__file__).parent / "plugin_dist" / "hive-plugin-example"
GREETING = "hello from hive-plugin-example"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH entry under which the example distribution is installed ('' if already installed)."""
    try:
        importlib.metadata.distribution("hive-plugin-example")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        return ""
    target = tmp_path_factory.mktemp("plugin-target")
    # No build isolation when hatchling is importable: nothing is downloaded and it takes well under a second.
    build = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         *build, "--target", str(target), str(DIST)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("hive_plugin_example-*.dist-info")), "pip did not install a distribution"
    return str(target)


def env_with(plugin_path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin_path, os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def hive_plugins(plugin_path: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hive_framework", "plugins", *args],
                          env=env_with(plugin_path, **extra), capture_output=True, text=True, timeout=60)


def listed(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_the_distribution_has_its_own_project_file_and_entry_point() -> None:
    # Given the example plugin's source tree, Then it is a project of its own declaring the entry point
    text = (DIST / "pyproject.toml").read_text()
    assert 'name = "hive-plugin-example"' in text
    assert '[project.entry-points."hive_framework.plugins"]' in text
    assert 'example = "hive_plugin_example"' in text


def test_hive_plugins_lists_the_installed_plugin_with_its_task_type(plugin_path: str, tmp_path: Path) -> None:
    # Given the plugin installed, When `hive plugins` runs (from an unrelated directory)
    rows = listed(subprocess.run(
        [sys.executable, "-m", "hive_framework", "plugins"], env=env_with(plugin_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    ))
    # Then it is listed by entry-point name, with the distribution's version, its hook and its task type
    assert rows["example"] == {
        "name": "example",
        "version": "0.3.1",
        "hooks": ["on_broadcast"],
        "task_types": ["example_reverse"],
    }


def test_the_plugin_is_found_by_hook_and_listed_beside_the_defaults(plugin_path: str) -> None:
    assert "example" in listed(hive_plugins(plugin_path, "--hook", "on_broadcast"))
    assert "example" not in listed(hive_plugins(plugin_path, "--hook", "execute"))
    assert {"example", "tasks", "arq"} <= set(listed(hive_plugins(plugin_path, "--all")))


@pytest.mark.parametrize(
    "extra",
    [{"HIVE_DISABLE_PLUGINS": "example"}, {"HIVE_LOAD_PLUGINS": ""}, {"HIVE_LOAD_PLUGINS": "  "}],
    ids=["disabled", "empty-allow-list", "blank-allow-list"],
)
def test_deny_and_allow_lists_hide_it(plugin_path: str, extra: dict[str, str]) -> None:
    # Given the plugin installed but denied, or not on an allow-list
    rows = listed(hive_plugins(plugin_path, "--all", **extra))
    # Then it is not loaded (and its task type is nowhere), while the built-ins still are
    assert "example" not in rows
    assert all("example_reverse" not in row["task_types"] for row in rows.values())
    assert "tasks" in rows


def test_an_allow_list_naming_it_loads_it(plugin_path: str) -> None:
    assert "example" in listed(hive_plugins(plugin_path, HIVE_LOAD_PLUGINS="example"))


def test_an_allow_list_naming_a_missing_plugin_is_one_line(plugin_path: str) -> None:
    proc = hive_plugins(plugin_path, HIVE_LOAD_PLUGINS="example,exampel")
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "'exampel'" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_spore_runs_the_plugin_task_end_to_end(
    plugin_path: str, hive_config: HiveConfig, hive: Hive, spore_processes
) -> None:
    # Given a spore process that has the plugin installed (PYTHONPATH) and no --app at all
    extra = {"PYTHONPATH": plugin_path} if plugin_path else {}
    spore = spore_processes("plugin-spore", extra_env=extra)

    # When it has announced the plugin's task type (the client process does not have the plugin)
    async def advertised() -> bool:
        return any("example_reverse" in n.task_types for n in await hive.nodes())

    await async_wait_until(advertised, timeout=30, what=f"the spore to advertise example_reverse\n{spore.log()}")
    if plugin_path:  # the plugin lives only on the spore's PYTHONPATH (nox installs it everywhere)
        assert "example_reverse" not in hive.kernel.task_types

    # Then a task of that type submitted here runs there and comes back
    result = await hive.run("example_reverse", {"text": "spore"}, timeout=30)
    assert result == {"reversed": "erops", "plugin": "hive-plugin-example"}

    # And the plugin's broadcast command is answered by that spore
    message_id = await hive.broadcast("EXAMPLE_HELLO")
    replies = await hive.broker.collect_replies(message_id, expected=1, timeout=10)
    assert [r.node_name for r in replies] == ["plugin-spore"]
    assert GREETING in replies[0].detail
