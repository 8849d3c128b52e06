"""The distribution as hive sees it: found through its entry point alone, light to import, easy to switch off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    return subprocess.run([sys.executable, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          cwd=PROJECT)


def test_the_distribution_declares_its_entry_point() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "hive-plugin-scrape"
    assert project["entry-points"]["hive_framework.plugins"] == {"scrape": "hive_plugin_scrape"}


def test_hive_plugins_lists_it_with_its_hooks_and_task_types() -> None:
    proc = run("-m", "hive_framework", "plugins")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["scrape"]["hooks"] == ["claim_items", "reduce", "register_commands"]
    assert rows["scrape"]["task_types"] == ["scrape", "web_scraping"]
    assert rows["scrape"]["version"]


def test_importing_the_plugin_loads_no_extraction_library() -> None:
    # Every `hive` command and every spore imports the plugin; trafilatura waits for the first page.
    code = ("import sys, hive_plugin_scrape; "
            "print(sorted(m for m in ('trafilatura', 'justext', 'lxml') if m in sys.modules))")
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_disabling_the_plugin_removes_its_command() -> None:
    assert "scrape" in run("-m", "hive_framework", "--help").stdout
    proc = run("-m", "hive_framework", "--help", HIVE_DISABLE_PLUGINS="scrape")
    assert proc.returncode == 0, proc.stderr
    assert "scrape" not in proc.stdout
