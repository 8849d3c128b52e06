"""The plugin SDK surface: what ``hive_framework`` exports, the process helpers, and what bundled plugins import."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

import hive_framework
from hive_framework import HiveConfig, private_namespace
from hive_framework.supervisor import PrivateNamespace, child_env, hive_argv

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Submodules a plugin may import besides ``hive_framework`` itself.
#: Submodules a plugin may import besides ``hive_framework`` itself: reply helpers, test fixtures, the wire
#: codec, map jobs and the pieces of ParallelSkill's report (documented in the README's plugin SDK list).
PUBLIC_SUBMODULES = {
    "hive_framework.redisutil", "hive_framework.testing", "hive_framework.wire", "hive_framework.jobs",
    "hive_framework.parallel",
}


@pytest.mark.parametrize("name", hive_framework.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(hive_framework, name) is not None


def test_lazy_names_are_exported() -> None:
    assert set(hive_framework._LAZY) <= set(hive_framework.__all__)


def test_cli_keeps_the_old_names() -> None:
    from hive_framework import cli

    assert cli.State is hive_framework.CliState
    assert cli.run_coro is hive_framework.run_coro


def plugin_imports() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO_ROOT / "plugins").glob("*/hive_plugin_*/**/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(REPO_ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found += [(str(path.relative_to(REPO_ROOT)), alias.name) for alias in node.names]
    return found


def test_bundled_plugins_import_only_the_public_surface() -> None:
    imports = plugin_imports()
    assert any(module == "hive_framework" for _, module in imports)  # the scan sees the plugins at all
    private = [(path, module) for path, module in imports
               if module.startswith("hive_framework.") and module not in PUBLIC_SUBMODULES]
    assert private == []


def test_hive_argv_runs_this_interpreter() -> None:
    assert hive_argv("spore", "--name", "a") == [sys.executable, "-m", "hive_framework", "spore", "--name", "a"]
    assert hive_argv("nexus", log_level="warning") == [
        sys.executable, "-m", "hive_framework", "--log-level", "warning", "nexus",
    ]


def test_child_env_carries_the_config_and_nothing_of_the_parents_hive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVE_KEY_PREFIX", "parent")
    monkeypatch.setenv("REDIS_URL", "redis://parent:1/0")
    monkeypatch.setenv("PYTHONPATH", "/already")
    config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None, key_prefix="child",
                             redis_url="redis://child:2/0")
    env = child_env(config, {"HIVE_APP": "tests.apps.basic"}, pythonpath=["/first"])
    assert env["HIVE_KEY_PREFIX"] == "child"
    assert env["REDIS_URL"] == "redis://child:2/0"
    assert env["HIVE_APP"] == "tests.apps.basic"
    assert env["PYTHONPATH"] == os.pathsep.join(["/first", "/already"])
    bare = child_env()
    assert not any(k.startswith(("HIVE_", "REDIS_")) for k in bare)
    assert bare["PYTHONPATH"] == "/already"


def test_private_namespaces_are_fresh_and_consistent() -> None:
    first, second = private_namespace("hive-x"), private_namespace("hive-x")
    assert first.prefix != second.prefix
    assert first.prefix.startswith("hive-x-")
    config = HiveConfig.load(environ=first.env, env_file=os.devnull, toml_file=None)
    assert config.evolve(**PrivateNamespace(first.prefix).settings) == config
    for name in ("high_priority_queue", "background_queue", "broadcast_channel"):
        assert getattr(config, name).startswith(f"{first.prefix}:")
