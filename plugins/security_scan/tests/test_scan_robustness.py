"""What real repositories throw at a scan (issue 17): odd file names, unreadable folders, files git tracks
but ignores, text files with binary-looking names, several secrets on one line, vendored folders, and
files too big to scan. None may abort the scan or lose a finding silently."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_plugin_security_scan.archive import ManifestEntry, pack, unpack
from hive_plugin_security_scan.findings import Finding, Skipped, merge_findings, reduce_shard_results
from hive_plugin_security_scan.inventory import collect, looks_binary
from hive_plugin_security_scan.job import ScanReport
from hive_plugin_security_scan.output import render
from hive_plugin_security_scan.paths import BadWirePath, display, from_wire, to_wire
from hive_plugin_security_scan.scanners import scan_files
from hive_plugin_security_scan.settings import ScanSettings
from hive_plugin_security_scan.task import Shard

AWS_LINE = 'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"\n'  # pragma: allowlist secret
TWO_KEYS = 'KEYS = ["AKIAIOSFODNN7EXAMPLE", "AKIAI44QH8DHBEXAMPLE"]\n'  # pragma: allowlist secret
SHELL = "import subprocess\nsubprocess.call('ls', shell=True)\n"
LATIN1_NAME = os.fsdecode(b"caf\xe9.py")
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def _git(cwd: Path, *args: str) -> str:
    assert GIT is not None
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run([GIT, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


# --------------------------------------------------------------------------------------------------
# 1. file names that are not UTF-8
# --------------------------------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_any_file_name_survives_the_wire(name: bytes) -> None:
    path = os.fsdecode(name)
    wire = json.loads(json.dumps(to_wire(path), ensure_ascii=False).encode("utf-8"))
    assert os.fsencode(from_wire(wire)) == name
    assert display(path).encode("utf-8")  # always printable


@pytest.mark.parametrize("raw", [3, None, {"b64": "%%%"}, {"b64": "YQ==", "x": 1}, ["a"], "\udce9"])
def test_bad_wire_paths_are_refused(raw: Any) -> None:
    with pytest.raises(BadWirePath):
        from_wire(raw)


def test_a_non_utf8_file_name_is_scanned_and_carried_losslessly(tmp_path: Path) -> None:
    # Given a folder with ok.py and café.py (Latin-1 bytes), both with a finding
    (tmp_path / "ok.py").write_text(SHELL)
    (tmp_path / LATIN1_NAME).write_text(SHELL)
    inventory = collect(tmp_path, ScanSettings())
    assert sorted(f.path for f in inventory.files) == sorted(["ok.py", LATIN1_NAME])
    # When it is packed as a shard, sent as JSON (strict UTF-8), unpacked and scanned
    packed, skipped = pack(inventory.root, [f.path for f in inventory.files])
    shard = Shard(archive=packed.sha256, manifest=packed.manifest, root=str(tmp_path), host="h", label="x")
    wire = json.dumps(shard.to_payload(), ensure_ascii=False).encode("utf-8")
    received = Shard.from_payload(json.loads(wire))
    assert received == shard and skipped == []
    dest = tmp_path.parent / "unpacked"
    dest.mkdir()
    unpack(packed.data, received.manifest, dest)
    result = scan_files(dest, received.paths)
    # Then both findings come back, through the reducer's JSON too, with the exact name
    results = json.loads(json.dumps({"findings": [f.to_dict() for f in result.findings]}, ensure_ascii=False))
    merged = [Finding.from_dict(f) for f in reduce_shard_results([results])["findings"]]
    assert sorted(f.path for f in merged if f.rule == "B602") == sorted(["ok.py", LATIN1_NAME])
    # And every output format renders it (the table and SARIF show it escaped, JSON also gives its bytes)
    report = ScanReport(root=tmp_path, findings=merged, files_scanned=2)
    assert "caf\\xe9.py:2" in render(report, "table")
    assert "caf%E9.py" in render(report, "sarif")
    findings = json.loads(render(report, "json").encode("utf-8"))["findings"]
    assert {os.fsencode(Finding.from_dict(f).path) for f in findings} == {b"ok.py", b"caf\xe9.py"}


@pytest.mark.slow
def test_hive_scan_of_a_non_utf8_name_reports_both_files(tmp_path: Path, no_cluster_env: dict[str, str]) -> None:
    # Given the repro: ok.py and café.py (Latin-1 name), both with a finding
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.py").write_text(SHELL)
    (tree / LATIN1_NAME).write_text(SHELL)
    # When hive scan runs on a private cluster
    done = _hive(["scan", str(tree), "--format", "json", "-n", "1"], no_cluster_env, tmp_path)
    # Then it completes with both findings, the odd name given as its exact bytes
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    paths = sorted(os.fsencode(Finding.from_dict(f).path) for f in report["findings"] if f["rule"] == "B602")
    assert paths == [b"caf\xe9.py", b"ok.py"]


def test_a_shard_naming_an_unknown_scanner_is_refused() -> None:
    from hive_plugin_security_scan.archive import UnsafeArchive

    payload = Shard(archive="0" * 64, manifest=(ManifestEntry("a.py", "0" * 64, 1),), root="/x", host="h",
                    scanners=("detect-secrets",)).to_payload()
    assert Shard.from_payload(payload).scanners == ("detect-secrets",)
    with pytest.raises(UnsafeArchive, match="scanners"):
        Shard.from_payload({**payload, "scanners": ["rm -rf"]})


def test_a_manifest_entry_with_a_raw_surrogate_is_refused() -> None:
    from hive_plugin_security_scan.archive import UnsafeArchive

    with pytest.raises(UnsafeArchive):
        ManifestEntry.from_list(["caf\udce9.py", "0" * 64, 1])
    assert ManifestEntry.from_list([{"b64": "Y2Fm6S5weQ=="}, "0" * 64, 1]).path == LATIN1_NAME


# --------------------------------------------------------------------------------------------------
# 2. unreadable folders
# --------------------------------------------------------------------------------------------------


def test_an_unreadable_folder_is_skipped_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a folder with a sub-folder this user may not open (faked: the tests may run as root)
    (tmp_path / "ok.py").write_text("x = 1\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "hidden.py").write_text("x = 2\n")
    real_scandir, real_stat = os.scandir, os.stat
    locked = str(sub.resolve())

    def inside(path: Any) -> bool:
        return os.path.abspath(os.fsdecode(path)).startswith(locked + os.sep)

    def scandir(path: Any = ".") -> Any:
        if os.path.abspath(os.fsdecode(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if inside(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    # When it is listed: no exception, and the folder is reported as not scanned
    inventory = collect(tmp_path, ScanSettings(), use_git=False)
    assert [f.path for f in inventory.files] == ["ok.py"]
    assert [(s.path, s.kind) for s in inventory.skipped] == [("sub/", "unreadable")]
    report = ScanReport(root=tmp_path, findings=[], skipped=inventory.skipped)
    assert not report.complete and "INCOMPLETE: 1 not scanned: sub/ (unreadable)" in report.summary_line()


# --------------------------------------------------------------------------------------------------
# 3. files git tracks are scanned even when ignored
# --------------------------------------------------------------------------------------------------


@needs_git
def test_tracked_files_are_scanned_even_when_gitignore_matches(tmp_path: Path) -> None:
    # Given a repository ignoring *.env, with prod.env force-added, an ignored untracked .env and a new file
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("*.env\nbuild/\n")
    (repo / "prod.env").write_text(AWS_LINE)
    (repo / "local.env").write_text(AWS_LINE)
    (repo / "app.py").write_text("x = 1\n")
    (repo / "build").mkdir()
    (repo / "build" / "gen.py").write_text("x = 1\n")
    _git(repo, "add", "-f", "prod.env", "app.py", ".gitignore")
    _git(repo, "commit", "-qm", "init")
    (repo / "new.py").write_text("y = 2\n")
    # When it is listed
    inventory = collect(repo, ScanSettings())
    # Then git's view wins: tracked + untracked-not-ignored
    assert inventory.mode == "git"
    assert [f.path for f in inventory.files] == [".gitignore", "app.py", "new.py", "prod.env"]
    # And the tracked key is found
    findings = scan_files(inventory.root, [f.path for f in inventory.files]).findings
    assert [(f.rule, f.path) for f in findings if f.rule == "AWSKeyDetector"] == [("AWSKeyDetector", "prod.env")]


@needs_git
def test_a_subfolder_of_a_repository_lists_its_own_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "top.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    assert [f.path for f in collect(tmp_path / "pkg", ScanSettings()).files] == ["a.py"]


# --------------------------------------------------------------------------------------------------
# 4. binary by content, not by name
# --------------------------------------------------------------------------------------------------


def test_binary_is_decided_by_content(tmp_path: Path) -> None:
    # Given a plain-text Dockerfile.db holding a key, a Latin-1 text file, and real binaries
    (tmp_path / "Dockerfile.db").write_text("FROM python:3.12\nENV " + AWS_LINE)
    (tmp_path / "legacy.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "zipped.gz").write_bytes(bytes((i * 7919 + 13) % 256 for i in range(4096)).replace(b"\0", b"\1"))
    inventory = collect(tmp_path, ScanSettings())
    assert [f.path for f in inventory.files] == ["Dockerfile.db", "legacy.txt"]
    assert {s.path: s.kind for s in inventory.skipped} == {"blob.bin": "binary", "zipped.gz": "binary"}
    findings = scan_files(inventory.root, ["Dockerfile.db"]).findings
    assert any(f.rule == "AWSKeyDetector" for f in findings)


def test_looks_binary_edge_cases() -> None:
    assert not looks_binary(b"")
    assert not looks_binary("abc é".encode()[:-1])  # a multi-byte character cut by the sniff window
    assert looks_binary(b"text\0text")
    assert not looks_binary(b"\x93smart quotes\x94 \x96 cp1252 \x80")  # cp1252 text


# --------------------------------------------------------------------------------------------------
# 5. distinct secrets on one line
# --------------------------------------------------------------------------------------------------


def test_two_secrets_on_one_line_are_two_findings(tmp_path: Path) -> None:
    (tmp_path / "keys.py").write_text(TWO_KEYS)
    findings = [f for f in scan_files(tmp_path, ["keys.py"]).findings if f.rule == "AWSKeyDetector"]
    assert len(findings) == 2 and findings[0].line == findings[1].line == 1
    assert findings[0].fingerprint != findings[1].fingerprint
    # the reducer keeps both, and still drops a true duplicate
    assert len(merge_findings([*findings, *findings])) == 2
    assert all("AKIA" not in json.dumps(f.to_dict()) for f in findings)


# --------------------------------------------------------------------------------------------------
# 6. default excludes are visible, and the repository's own "!" rules win
# --------------------------------------------------------------------------------------------------


def _vendored_tree(root: Path, gitignore: str) -> None:
    for rel in ("lib/_vendor/six.py", "test/units/_vendor/test_vendor.py", "app.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / ".gitignore").write_text(gitignore)


def test_default_excludes_are_listed_and_a_gitignore_negation_wins(tmp_path: Path) -> None:
    _vendored_tree(tmp_path, "!test/units/_vendor/\n")
    inventory = collect(tmp_path, ScanSettings(), use_git=False)
    assert [f.path for f in inventory.files] == [".gitignore", "app.py", "test/units/_vendor/test_vendor.py"]
    assert [(e.path, e.pattern, e.source) for e in inventory.excluded] == [("lib/_vendor/", "_vendor/", "default")]
    report = ScanReport(root=tmp_path, findings=[], excluded=inventory.excluded)
    assert "EXCLUDED: lib/_vendor/ (pattern '_vendor/', default)" in render(report, "table")
    assert json.loads(render(report, "json"))["excluded"] == [
        {"path": "lib/_vendor/", "pattern": "_vendor/", "source": "default"}
    ]
    # --exclude patterns come last: they can re-include a default too
    assert "lib/_vendor/six.py" in [f.path for f in collect(tmp_path, ScanSettings(), ["!_vendor/"]).files]


@needs_git
def test_in_a_git_tree_too_the_negation_wins_and_excludes_are_listed(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _vendored_tree(tmp_path, "!test/units/_vendor/\n")
    _git(tmp_path, "add", ".")
    inventory = collect(tmp_path, ScanSettings())
    assert inventory.mode == "git"
    assert [f.path for f in inventory.files] == [".gitignore", "app.py", "test/units/_vendor/test_vendor.py"]
    assert [(e.path, e.pattern) for e in inventory.excluded] == [("lib/_vendor/", "_vendor/")]


# --------------------------------------------------------------------------------------------------
# 7. skipped files make the scan incomplete: exit 3 unless --allow-incomplete
# --------------------------------------------------------------------------------------------------


def test_skip_kinds_that_make_a_scan_incomplete() -> None:
    assert Skipped(path="a", reason="", kind="too-large").incomplete
    assert Skipped(path="a", reason="", kind="unreadable").incomplete
    assert not Skipped(path="a", reason="", kind="binary").incomplete
    assert not Skipped(path="a", reason="", kind="symlink").incomplete


def _hive(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_tree_whose_only_file_is_too_big_exits_3(tmp_path: Path, no_cluster_env: dict[str, str]) -> None:
    # Given a tree whose only file, with a finding, is over max_file_bytes
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.py").write_text(SHELL + "# padding\n" * 300)
    config = tmp_path / "hive.toml"
    config.write_text("[plugins.security_scan]\nmax_file_bytes = 1000\n")
    # When it is scanned with --fail-on high
    done = _hive(["--config", str(config), "scan", str(tree), "--fail-on", "high"], no_cluster_env, tmp_path)
    # Then the summary names the file, and the exit status is 3, not 0
    assert done.returncode == 3, (done.stdout, done.stderr)
    last = done.stdout.splitlines()[-1]
    assert "INCOMPLETE: 1 not scanned: big.py (too-large)" in last
    assert "NOT SCANNED: big.py: larger than 1000 bytes" in done.stdout
    # And --allow-incomplete accepts it
    done = _hive(["--config", str(config), "scan", str(tree), "--allow-incomplete", "--format", "json"],
                 no_cluster_env, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    assert summary["complete"] is False and summary["not_scanned"] == 1


def test_a_bad_setting_is_exit_4_not_1(tmp_path: Path, no_cluster_env: dict[str, str]) -> None:
    config = tmp_path / "hive.toml"
    config.write_text("[plugins.security_scan]\nmax_file_bytes = -1\n")
    done = _hive(["--config", str(config), "scan", str(tmp_path)], no_cluster_env, tmp_path)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "max_file_bytes" in done.stderr
