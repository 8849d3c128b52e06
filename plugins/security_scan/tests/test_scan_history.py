"""``hive scan --history``: secrets committed and later removed, found with their commit, path and line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive

from hive_plugin_security_scan.history import HISTORY_SCANNERS, history_blobs, in_history, materialised
from hive_plugin_security_scan.inventory import collect
from hive_plugin_security_scan.job import run_scan
from hive_plugin_security_scan.scanners import scan_files
from hive_plugin_security_scan.settings import ScanSettings

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")
KEY_LINE = 'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"\n'  # pragma: allowlist secret


def _git(cwd: Path, *args: str) -> str:
    assert GIT is not None
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run([GIT, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def leaky_repo(tmp_path: Path) -> tuple[Path, str]:
    """A repository where commit 2 adds a key to settings.py, commit 3 removes it and commit 4 re-adds the
    same file content (a revert): (the repository, the id of commit 2)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "settings.py").write_text("DEBUG = False\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "start")
    (repo / "settings.py").write_text("DEBUG = False\n" + KEY_LINE)
    _git(repo, "commit", "-qam", "add the key")
    leak = _git(repo, "rev-parse", "HEAD")
    (repo / "settings.py").write_text("DEBUG = False\n")
    _git(repo, "commit", "-qam", "remove the key")
    (repo / "settings.py").write_text("DEBUG = False\n" + KEY_LINE)
    _git(repo, "commit", "-qam", "oops, again")
    (repo / "settings.py").write_text("DEBUG = True\n")
    _git(repo, "commit", "-qam", "gone for good")
    return repo, leak


def test_history_lists_each_blob_once_with_the_commit_that_added_it(leaky_repo: tuple[Path, str]) -> None:
    repo, leak = leaky_repo
    blobs = history_blobs(repo, "HEAD")
    settings_blobs = [b for b in blobs if b.path == "settings.py"]
    # start, key, (removed = start again: same blob), key again (same blob), DEBUG = True
    assert len(settings_blobs) == 3 and len({b.blob for b in blobs}) == len(blobs)
    assert [b.commit for b in settings_blobs][1] == leak
    # a range limits it to what those commits added
    assert {b.path for b in history_blobs(repo, "HEAD~1..HEAD")} == {"settings.py"}


async def test_a_key_added_then_removed_is_found_in_history(hive: Hive, run_spore: Any,
                                                             leaky_repo: tuple[Path, str]) -> None:
    repo, leak = leaky_repo
    # The tree as it is now holds no key
    now = collect(repo, ScanSettings())
    assert [f for f in scan_files(now.root, [f.path for f in now.files]).findings if f.rule == "AWSKeyDetector"] == []
    # When its history is scanned on a spore
    await run_spore(name="solo", concurrency=1)
    settings = ScanSettings()
    with materialised(repo, "HEAD", settings) as (inventory, where):
        assert len(inventory.files) == 3  # settings.py three times; the PNG is binary
        report = await run_scan(hive.broker, inventory, shards=2, settings=settings, scanners=HISTORY_SCANNERS)
        report = in_history(report, repo, where)
    # Then the key is reported once, at the commit that added it, with its path and line
    keys = [(f.rule, f.path, f.line, f.commit) for f in report.findings if f.rule == "AWSKeyDetector"]
    assert keys == [("AWSKeyDetector", "settings.py", 2, leak)]
    assert {f.tool for f in report.findings} == {"detect-secrets"}
    assert report.complete and report.root == repo


@pytest.mark.slow
def test_hive_scan_history_command(leaky_repo: tuple[Path, str], no_cluster_env: dict[str, str],
                                   tmp_path: Path) -> None:
    repo, leak = leaky_repo
    done = subprocess.run([sys.executable, "-m", "hive_framework", "scan", str(repo), "--history", "--format", "json",
                           "-n", "1"], env=no_cluster_env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)["findings"]
    assert [(f["path"], f["line"], f["commit"]) for f in findings if f["rule"] == "AWSKeyDetector"] == [
        ("settings.py", 2, leak)
    ]
    # a bad range is an error (exit 4), not a traceback
    bad = subprocess.run([sys.executable, "-m", "hive_framework", "scan", str(repo), "--history", "nope..HEAD"],
                         env=no_cluster_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 4 and "Traceback" not in bad.stderr and "rev-list" in bad.stderr
