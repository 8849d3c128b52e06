"""Incremental scans: a file's findings are cached under its content hash, the scanners' versions and
settings; a rescan of an unchanged tree runs no scanner, a one-file change rescans that file only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import VULNERABLE, direct_scan
from hive_framework import Hive, HiveConfig

from hive_plugin_security_scan import cache as cache_module
from hive_plugin_security_scan.cache import FileCache, RedisCache, entry_key, lookup, scanner_versions
from hive_plugin_security_scan.inventory import collect
from hive_plugin_security_scan.job import run_scan
from hive_plugin_security_scan.settings import ScanSettings


def test_keys_depend_on_path_content_and_versions() -> None:
    versions = scanner_versions()
    assert "bandit=" in versions and "detect-secrets=" in versions and "schema=" in versions
    key = entry_key("a.py", "0" * 64, versions)
    assert key != entry_key("b.py", "0" * 64, versions)
    assert key != entry_key("a.py", "1" * 64, versions)
    assert key != entry_key("a.py", "0" * 64, versions + ";bandit=other")


async def test_file_cache_expires_entries(tmp_path: Path) -> None:
    store = FileCache(tmp_path / "c" / "findings.sqlite3")
    await store.put_many({"a": b"1", "b": b"2"}, ttl=60)
    await store.put_many({"gone": b"3"}, ttl=1e-9)
    assert await store.get_many(["a", "gone", "b", "missing"]) == [b"1", None, b"2", None]


@pytest.mark.redis
async def test_a_rescan_runs_no_scanner_and_a_change_rescans_one_file(hive: Hive, run_spore: Any,
                                                                      hive_config: HiveConfig, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Path(shutil.copytree(VULNERABLE, tmp_path / "app"))
    await run_spore(name="solo", concurrency=2)
    store = RedisCache(hive.broker.redis, hive_config.key_prefix)
    settings = ScanSettings()
    # Given a first scan with the cache: everything is scanned
    first = await run_scan(hive.broker, collect(tree, settings), shards=3, settings=settings, cache=store)
    assert first.cached == 0 and first.shards == 3 and first.findings == direct_scan(tree)
    # When the unchanged tree is scanned again
    second = await run_scan(hive.broker, collect(tree, settings), shards=3, settings=settings, cache=store)
    # Then no shard is sent, and the findings are the same
    assert second.shards == 0 and second.cached == second.files_scanned == 10
    assert second.findings == first.findings
    # When one file changes (its shell=True finding removed)
    (tree / "app" / "files.py").write_text("def list_folder(folder: str) -> str:\n    return folder\n")
    third = await run_scan(hive.broker, collect(tree, settings), shards=3, settings=settings, cache=store)
    # Then that file only is scanned, and the report is what a full scan says
    assert third.shards == 1 and third.cached == 9 and third.files_scanned == 10
    assert third.findings == direct_scan(tree)
    assert not [f for f in third.findings if f.path == "app/files.py"]
    # And results under other scanner versions are not used
    scanner_versions.cache_clear()
    monkeypatch.setattr(cache_module, "SCANNER_SETTINGS", "something else")
    try:
        fresh = await lookup(store, collect(tree, settings))
    finally:
        monkeypatch.undo()
        scanner_versions.cache_clear()
    assert fresh.hits == 0 and len(fresh.misses) == 10


def _hive(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.mark.slow
def test_hive_scan_rescan_uses_the_file_cache_without_spores(no_cluster_env: dict[str, str], tmp_path: Path) -> None:
    # Given a scan on a private Redis (whose cache is a file under XDG_CACHE_HOME)
    first = _hive(["scan", str(VULNERABLE), "--format", "json", "-n", "1"], no_cluster_env, tmp_path)
    assert first.returncode == 0, first.stderr
    # When the same tree is scanned again
    again = _hive(["scan", str(VULNERABLE), "--format", "json", "-n", "1"], no_cluster_env, tmp_path)
    # Then no spore (nor Redis) is started, and the report is the same
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stderr
    assert json.loads(again.stdout)["findings"] == json.loads(first.stdout)["findings"]
    assert json.loads(again.stdout)["summary"]["cached"] == 10
    # And --no-cache scans everything again
    forced = _hive(["scan", str(VULNERABLE), "--format", "json", "-n", "1", "--no-cache"], no_cluster_env, tmp_path)
    assert forced.returncode == 0 and "starting 1 local spore" in forced.stderr
    assert json.loads(forced.stdout)["summary"]["cached"] == 0


async def test_a_file_cache_that_cannot_be_opened_is_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    store = FileCache(tmp_path / "not-a-folder" / "findings.sqlite3")
    await store.put_many({"a": b"1"}, ttl=60)  # no exception
    assert await store.get_many(["a"]) == [None]
