"""Scans on a real hive: in-process spores, spore processes that cannot see the tree, and ``hive scan`` itself.

Every test here needs a Redis (``hive_config``): the one at HIVE_TEST_REDIS_URL, REDIS_URL or
127.0.0.1:6379, each test in its own key namespace. Tests marked ``slow`` start OS processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import CLEAN, PLANTED, VULNERABLE, direct_scan, sarif_errors
from hive_framework import Hive, HiveConfig, ParallelSkill
from hive_framework.testing import async_wait_until

from hive_plugin_security_scan.archive import pack
from hive_plugin_security_scan.inventory import collect
from hive_plugin_security_scan.job import ScanReport, run_scan, uploaded_shards
from hive_plugin_security_scan.settings import ScanSettings
from hive_plugin_security_scan.task import Shard, can_read_in_place

pytestmark = pytest.mark.redis
SUMMARY = re.compile(
    r"^\d+ findings? \(\d+ high, \d+ medium, \d+ low\) in \d+ files( \(\d+ cached\))?, \d+ shards? on \d+ spores?, "
)


def _archive_keys(config: HiveConfig) -> list[bytes]:
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        return list(client.scan_iter(match=f"{config.key_prefix}:security_scan:archive:*"))
    finally:
        client.close()


async def _online(hive: Hive, count: int) -> None:
    async def enough() -> bool:
        return len(await hive.nodes()) >= count

    await async_wait_until(enough, timeout=60, what=f"{count} spore(s) online")


async def _scan(hive: Hive, root: Path, shards: int) -> ScanReport:
    return await run_scan(hive.broker, collect(root, ScanSettings()), shards=shards, timeout=120)


# --------------------------------------------------------------------------------------------------
# in-process spores
# --------------------------------------------------------------------------------------------------


async def test_scan_on_a_spore_matches_the_direct_scan_and_cleans_up(hive: Hive, run_spore: Any,
                                                                      hive_config: HiveConfig) -> None:
    # Given one spore on this host, which sees the files where they are
    await run_spore(name="solo", concurrency=2)
    # When the vulnerable app is scanned in 4 shards
    report = await _scan(hive, VULNERABLE, shards=4)
    # Then the findings are exactly those of the scanners run directly on the tree
    assert report.findings == direct_scan(VULNERABLE)
    assert report.complete and report.shards == 4 and report.files_scanned == 10
    assert report.sources == {"local": 4} and report.nodes == {"solo": 4}
    # And no shard archive is left in Redis
    assert _archive_keys(hive_config) == []


async def test_a_file_changed_after_upload_is_scanned_from_its_archive(hive: Hive, run_spore: Any,
                                                                       vulnerable_copy: Path) -> None:
    # Given shards uploaded for a tree, one of whose files then changes on disk
    await run_spore(name="solo", concurrency=2)
    settings = ScanSettings()
    inventory = collect(vulnerable_copy, settings)
    async with uploaded_shards(hive.broker.redis, hive.config, inventory, shards=3, settings=settings) as payloads:
        (vulnerable_copy / "app" / "files.py").write_text("def list_folder(folder: str) -> str:\n    return ''\n")
        # When they run through the seed's ParallelSkill, which needs no task type or reducer
        result = json.loads(await ParallelSkill(hive.broker).parallel_execute("Security audit", payloads))
    # Then the scan plugin claimed them and reduced them
    assert result["task_type"] == "security_scan" and result["reducer"] == "security_findings"
    reduced = result["reduced"]
    # And the shard holding the changed file was read from its archive: what was uploaded is what was scanned
    assert reduced["sources"] == {"archive": 1, "local": 2}
    assert [f["rule"] for f in reduced["findings"] if f["path"] == "app/files.py"] == ["B602", "B404"]
    assert reduced["findings"] == [f.to_dict() for f in direct_scan(VULNERABLE)]


def test_in_place_reading_needs_the_same_host_and_bytes(vulnerable_copy: Path) -> None:
    packed, _ = pack(vulnerable_copy, ["app/config.py"])
    shard = Shard(archive=packed.sha256, manifest=packed.manifest, root=str(vulnerable_copy),
                  host=socket.gethostname())
    assert can_read_in_place(shard, ScanSettings())
    assert not can_read_in_place(shard, ScanSettings(read_local=False))
    other_host = Shard(archive=packed.sha256, manifest=packed.manifest, root=str(vulnerable_copy), host="elsewhere")
    assert not can_read_in_place(other_host, ScanSettings())


# --------------------------------------------------------------------------------------------------
# spore processes
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_one_spore_or_several_processes_give_identical_findings(hive: Hive, spore_processes: Any,
                                                                      tmp_path: Path) -> None:
    # Given a tree of several copies of both sample apps
    tree = tmp_path / "tree"
    for index in range(3):
        shutil.copytree(VULNERABLE, tree / f"vulnerable-{index}")
        shutil.copytree(CLEAN, tree / f"clean-{index}")
    expected = direct_scan(tree)
    assert len(expected) == 3 * len(direct_scan(VULNERABLE))
    # When it is scanned by one spore process
    spore_processes("one", concurrency=1)
    await _online(hive, 1)
    alone = await _scan(hive, tree, shards=6)
    # And again by three
    spore_processes("two", concurrency=1)
    spore_processes("three", concurrency=1)
    await _online(hive, 3)
    together = await _scan(hive, tree, shards=12)
    # Then both scans report exactly the findings of the scanners run directly on the tree
    assert alone.findings == expected and alone.nodes == {"one": 6}
    assert together.findings == expected and together.complete and len(together.nodes) >= 2


@pytest.mark.slow
async def test_a_spore_with_many_slots_runs_one_shard_at_a_time(hive: Hive, spore_processes: Any,
                                                                tmp_path: Path) -> None:
    # Given one spore with the default ten slots (a cluster that also serves other task types) and a tree
    tree = tmp_path / "tree"
    for index in range(8):
        shutil.copytree(VULNERABLE, tree / f"vulnerable-{index}")
    spore_processes("wide-a", concurrency=10)
    await _online(hive, 1)
    # When a scan of eight shards runs, watched all along
    running: list[int] = []
    scan = asyncio.create_task(_scan(hive, tree, shards=8))
    while not scan.done():
        running.append((await hive.queue_stats()).get("tasks_running", 0))
        await asyncio.wait([scan], timeout=0.02)
    report = await scan
    # Then the spore ran the shards one at a time, leaving the others queued for any spore with room
    assert report.complete and report.nodes == {"wide-a": 8}
    assert max(running) == 1, running


@pytest.mark.slow
async def test_spores_that_cannot_see_the_tree_scan_from_archives(hive: Hive, spore_processes: Any, tmp_path: Path,
                                                                  vulnerable_copy: Path) -> None:
    # Given spores running from another folder, whose hive.toml turns off in-place reading
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "hive.toml").write_text("[plugins.security_scan]\nread_local = false\n")
    for name in ("far-1", "far-2"):
        spore_processes(name, concurrency=1, cwd=elsewhere)
    await _online(hive, 2)
    # When a copy of the tree is uploaded and then deleted before any spore runs a shard
    settings = ScanSettings()
    inventory = collect(vulnerable_copy, settings)
    async with uploaded_shards(hive.broker.redis, hive.config, inventory, shards=5, settings=settings) as payloads:
        shutil.rmtree(vulnerable_copy)
        result = json.loads(await ParallelSkill(hive.broker).parallel_execute("Security audit", payloads))
    # Then every shard was unpacked from its archive, and the findings are those of the original tree
    reduced = result["reduced"]
    assert result["summary"]["completed"] == 5
    assert reduced["sources"] == {"archive": 5}
    assert reduced["findings"] == [f.to_dict() for f in direct_scan(VULNERABLE)]


# --------------------------------------------------------------------------------------------------
# the hive scan command
# --------------------------------------------------------------------------------------------------


def _hive(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.mark.slow
def test_hive_scan_starts_a_private_cluster_and_prints_the_table(no_cluster_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    # Given a shell with no Redis configured
    # When the README's command scans the vulnerable app
    done = _hive(["scan", str(VULNERABLE)], no_cluster_env, tmp_path)
    # Then it exits 0 (findings do not fail it by default) and prints every planted issue in the table
    assert done.returncode == 0, done.stderr
    rows = [line.split()[:3] for line in done.stdout.splitlines()]
    for planted in PLANTED:
        severity = next(f.severity for f in direct_scan(VULNERABLE) if f.rule == planted.rule)
        assert [severity, planted.rule, f"{planted.path}:{planted.line}"] in rows, planted
    assert SUMMARY.match(done.stdout.splitlines()[-1]), done.stdout
    assert "starting 2 local spore(s)" in done.stderr or "local spore" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_hive_scan_sarif_file_and_fail_on(no_cluster_env: dict[str, str], tmp_path: Path,
                                          sarif_validator: Any) -> None:
    out = tmp_path / "scan.sarif"
    done = _hive(["scan", str(VULNERABLE), "--format", "sarif", "-o", str(out), "--fail-on", "high", "-n", "1"],
                 no_cluster_env, tmp_path)
    assert done.returncode == 1, done.stderr
    log = json.loads(out.read_text())
    assert sarif_errors(sarif_validator, log) == []
    assert len(log["runs"][0]["results"]) == len(direct_scan(VULNERABLE))
    assert done.stdout == "" and SUMMARY.match(done.stderr.splitlines()[-1].removeprefix("hive scan: "))


@pytest.mark.slow
def test_hive_scan_of_the_clean_twin_finds_nothing_on_fakeredis(no_cluster_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    # Given a machine with only Python: no redis-server on PATH
    env = {**no_cluster_env, "PATH": os.path.dirname(sys.executable)}
    assert shutil.which("redis-server", path=env["PATH"]) is None
    # When the clean twin is scanned, failing on any finding
    done = _hive(["scan", str(CLEAN), "--format", "json", "--fail-on", "low", "-n", "1"], env, tmp_path)
    # Then the embedded fakeredis server carried the scan, and nothing was found
    assert done.returncode == 0, done.stderr
    assert "fakeredis" in done.stderr
    report = json.loads(done.stdout)
    assert report["findings"] == [] and report["summary"]["files_scanned"] == 9 and report["summary"]["complete"]


@pytest.mark.slow
async def test_hive_scan_on_a_configured_cluster(hive: Hive, hive_config: HiveConfig, spore_processes: Any,
                                                 no_cluster_env: dict[str, str], tmp_path: Path) -> None:
    env = {**no_cluster_env, **hive_config.to_env()}
    # Given a configured Redis where no spore runs yet: a clear error, not a wait
    done = _hive(["scan", str(VULNERABLE)], env, tmp_path)
    assert done.returncode == 4 and "no online spore" in done.stderr and "Traceback" not in done.stderr
    # Given one spore there: the scan runs on it
    spore_processes("cluster-spore", concurrency=2)
    await _online(hive, 1)
    done = _hive(["scan", str(VULNERABLE), "--format", "json", "--shards", "3"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["nodes"] == {"cluster-spore": 3}
    assert report["findings"] == [f.to_dict() for f in direct_scan(VULNERABLE)]
    # And --local starts spores of its own on that Redis, under a private prefix
    done = _hive(["scan", str(VULNERABLE), "--local", "-n", "1", "--format", "json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the configured Redis" in done.stderr and "cluster-spore" not in json.loads(done.stdout)["summary"]["nodes"]
    # And a scan that cannot finish in time says what it did not scan, and exits 3
    done = _hive(["scan", str(VULNERABLE), "--timeout", "0.001", "--no-cache"], env, tmp_path)
    assert done.returncode == 3, done.stderr
    assert "NOT SCANNED" in done.stdout and "incomplete" in done.stderr
    assert _archive_keys(hive_config) == []
