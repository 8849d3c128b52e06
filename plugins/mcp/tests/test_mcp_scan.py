"""The opt-in ``scan`` tool: paths limited to the configured roots; a real scan on a spore process; SARIF resource."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive
from hive_framework.testing import async_wait_until
from hypothesis import given
from hypothesis import strategies as st

from hive_plugin_mcp.scan import PathRefused, allowed_path

from mcp_helpers import call_then_cancel, error_json, stdio_session, structured

VULNERABLE_CODE = '''import subprocess


def run(command):
    return subprocess.call(command, shell=True)
'''


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ (allowed) with a project and a link out of it, and outside/ next to it."""
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    (root / "project" / "app.py").write_text(VULNERABLE_CODE, encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours\n", encoding="utf-8")
    os.symlink(outside, root / "escape")
    return {"root": root, "project": root / "project", "outside": outside}


def test_paths_under_a_root_are_allowed_and_resolved(tree: dict[str, Path]) -> None:
    roots = [str(tree["root"])]
    assert allowed_path(str(tree["project"]), roots) == tree["project"].resolve()
    assert allowed_path(f"file://{tree['project']}/app.py", roots) == (tree["project"] / "app.py").resolve()
    assert allowed_path(str(tree["root"] / "project" / ".." / "project"), roots) == tree["project"].resolve()


@pytest.mark.parametrize("make", [
    lambda t: str(t["outside"]),
    lambda t: str(t["root"] / "escape"),                 # a symbolic link out of the root
    lambda t: str(t["root"] / "escape" / "secret.txt"),
    lambda t: str(t["root"] / ".." / "outside"),
    lambda t: "project",                                 # relative
    lambda t: str(t["root"] / "missing"),
    lambda t: "https://github.com/example/repo.git",
    lambda t: "git@github.com:example/repo.git",
    lambda t: f"file://evil.example{t['project']}",
])
def test_anything_else_is_refused(tree: dict[str, Path], make: Any) -> None:
    with pytest.raises(PathRefused):
        allowed_path(make(tree), [str(tree["root"])])


def test_a_git_url_names_a_clone_already_under_a_root(tree: dict[str, Path]) -> None:
    (tree["project"] / ".git").mkdir()
    (tree["project"] / ".git" / "config").write_text(
        '[core]\n\tbare = false\n[remote "origin"]\n\turl = git@github.com:example/repo.git\n'
        '\tfetch = +refs/heads/*:refs/remotes/origin/*\n', encoding="utf-8")
    roots = [str(tree["root"])]
    for url in ("https://github.com/example/repo", "https://github.com/example/repo.git",
                "ssh://git@github.com/example/repo.git", "git@github.com:example/repo.git"):
        assert allowed_path(url, roots) == tree["project"].resolve()
    with pytest.raises(PathRefused, match="no clone of"):
        allowed_path("https://github.com/example/other", roots)
    with pytest.raises(PathRefused, match="no clone of"):  # the clone is not under these roots
        allowed_path("https://github.com/example/repo", [str(tree["outside"])])


NAMES = st.text(st.sampled_from("abcxyz019-_"), min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@given(NAMES, NAMES, st.sampled_from(["github.com", "gitlab.example.org"]))
def test_every_spelling_of_a_git_url_names_the_same_repository(owner: str, repo: str, host: str) -> None:
    from hive_plugin_mcp.scan import repository_key

    spellings = [f"https://{host}/{owner}/{repo}", f"https://{host}/{owner}/{repo}.git/",
                 f"ssh://git@{host}/{owner}/{repo}.git", f"git@{host}:{owner}/{repo}.git"]
    assert {repository_key(s) for s in spellings} == {f"{host}/{owner}/{repo}"}


def test_no_roots_means_nothing_is_scanned(tree: dict[str, Path]) -> None:
    with pytest.raises(PathRefused, match="no scan_roots"):
        allowed_path(str(tree["project"]), [])


@given(st.lists(st.sampled_from(["..", ".", "project", "escape", "app.py", "secret.txt", "x", "//"]), max_size=6))
def test_whatever_the_segments_an_allowed_path_stays_under_the_root(tmp_path_factory: Any, parts: list[str]) -> None:
    base = tmp_path_factory.getbasetemp() / "scan-prop"
    if not base.exists():
        (base / "root" / "project").mkdir(parents=True)
        (base / "root" / "project" / "app.py").write_text("x = 1\n", encoding="utf-8")
        (base / "outside").mkdir()
        (base / "outside" / "secret.txt").write_text("no\n", encoding="utf-8")
        os.symlink(base / "outside", base / "root" / "escape")
    root = (base / "root").resolve()
    try:
        found = allowed_path(str(base / "root") + "/" + "/".join(parts), [str(base / "root")])
    except PathRefused:
        return
    assert found == root or found.is_relative_to(root)


@pytest.fixture
def mcp_settings(tmp_path: Path) -> dict[str, Any]:
    return {"enable": ["scan"], "scan_roots": [str(tmp_path / "root")]}


@pytest.mark.redis
@pytest.mark.slow
async def test_a_scan_runs_on_a_spore_and_a_scan_outside_the_roots_is_refused(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path, tree: dict[str, Path]
) -> None:
    pytest.importorskip("hive_plugin_security_scan")
    await spores(1)
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(f"{done:g}/{total:g} {message}")

    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        refused = error_json(await client.call_tool("scan", {"path": str(tree["outside"])}))
        escaped = error_json(await client.call_tool("scan", {"path": str(tree["root"] / "escape")}))
        report = structured(await client.call_tool("scan", {"path": str(tree["project"]), "shards": 1},
                                                   progress_callback=on_progress))
        sarif = json.loads((await client.read_resource(report["sarif_uri"])).contents[0].text)

    assert refused["error_type"] == "PathRefused" and "outside the allowed scan roots" in refused["error"]
    assert escaped["error_type"] == "PathRefused"
    assert report["root"] == str(tree["project"].resolve())
    assert report["summary"]["complete"] is True and report["summary"]["files_scanned"] == 1
    rules = {f["rule"] for f in report["top_findings"]}
    assert "B602" in rules, report  # subprocess call with shell=True
    assert progress == ["0/1 scanning in 1 shards", f"1/1 1/1 shards, {report['summary']['findings']} findings"]
    assert sarif["version"] == "2.1.0"
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {f["rule"] for f in report["top_findings"]}
    assert sum((await hive.queue_stats()).values()) == 1  # one shard task, nothing for the refused calls


@pytest.mark.redis
@pytest.mark.slow
async def test_cancelling_a_scan_cancels_its_queued_shards(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path, tree: dict[str, Path]
) -> None:
    pytest.importorskip("hive_plugin_security_scan")
    for n in range(8):
        (tree["project"] / f"module_{n}.py").write_text(VULNERABLE_CODE, encoding="utf-8")
    # one shard at a time, each at least 1 s: the other 8 cannot all finish before the cancel lands
    await spores(1, concurrency=1, env={"MCP_TEST_SHARD_SECONDS": "1"})
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        # cancelled once the first shard is done, so the shard tasks certainly exist
        shards = await call_then_cancel(client, "scan", {"path": str(tree["project"]), "shards": 9},
                                        pattern=r"^1/(\d+) shards")

        async def settled() -> dict[str, int]:
            stats = await hive.queue_stats()
            unsettled = stats["tasks_pending"] + stats["tasks_running"] + stats["tasks_retrying"]
            return stats if unsettled == 0 and stats["tasks_cancelled"] else {}

        stats = await async_wait_until(settled, timeout=30, what="the scan's shards cancelled or done")
    assert int(shards) == 9
    assert stats["tasks_cancelled"] + stats["tasks_completed"] + stats["tasks_failed"] == 9
    assert stats["tasks_cancelled"] >= 4, stats  # one spore, one shard at a time: most never started
    assert "scan of" in (tmp_path / "mcp.log").read_text()
