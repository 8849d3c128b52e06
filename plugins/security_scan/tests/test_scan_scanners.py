"""The scanners on the sample trees: every planted issue found, the clean twin silent, and the same
findings as the bandit and detect-secrets commands give when run directly on the tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLEAN, PLANTED, VULNERABLE, direct_scan

from hive_plugin_security_scan.findings import Finding
from hive_plugin_security_scan.scanners import scan_files


@pytest.fixture(scope="module")
def vulnerable_findings() -> list[Finding]:
    return direct_scan(VULNERABLE)


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: f"{p.rule}-{p.path}")
def test_each_planted_issue_is_found_in_its_file_line_and_rule(planted, vulnerable_findings) -> None:
    matches = [f for f in vulnerable_findings if (f.tool, f.rule, f.path) == (planted.tool, planted.rule, planted.path)]
    assert planted.line in [f.line for f in matches], f"{planted} not found; got {matches}"


def test_findings_are_sorted_most_severe_first_and_carry_no_secret(vulnerable_findings) -> None:
    ranks = {"high": 0, "medium": 1, "low": 2}
    assert [ranks[f.severity] for f in vulnerable_findings] == sorted(ranks[f.severity] for f in vulnerable_findings)
    text = json.dumps([f.to_dict() for f in vulnerable_findings])
    assert "Wint3r-is-coming-2024!" not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    assert all(len(f.fingerprint) == 32 for f in vulnerable_findings)


def test_the_clean_twin_yields_nothing() -> None:
    assert direct_scan(CLEAN) == []


def _bandit_cli(root: Path) -> set[tuple[str, str, str, int]]:
    out = subprocess.run([sys.executable, "-m", "bandit", "-r", ".", "-f", "json", "-q"], cwd=root,
                         capture_output=True, text=True, check=False)
    report = json.loads(out.stdout)
    assert report["errors"] == []
    return {("bandit", r["test_id"], r["filename"].removeprefix("./"), r["line_number"]) for r in report["results"]}


def _detect_secrets_cli(root: Path) -> set[tuple[str, str, str, int]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    plugin_of = {kind: cls.__name__ for kind, cls in get_mapping_from_secret_type_to_class().items()}
    out = subprocess.run([sys.executable, "-m", "detect_secrets", "scan", "--all-files", "."], cwd=root,
                         capture_output=True, text=True, check=True)
    results = json.loads(out.stdout)["results"]
    return {("detect-secrets", plugin_of[s["type"]], name, s["line_number"]) for name, found in results.items()
            for s in found}


@pytest.mark.parametrize("root", [VULNERABLE, CLEAN], ids=["vulnerable", "clean"])
def test_same_findings_as_the_scanners_run_directly_on_the_tree(root: Path) -> None:
    # Given the bandit and detect-secrets commands run on the tree, as a user would run them
    expected = _bandit_cli(root) | _detect_secrets_cli(root)
    # When the plugin scans it
    ours = {(f.tool, f.rule, f.path, f.line) for f in direct_scan(root) if f.tool != "dependencies"}
    # Then it reports exactly what they report
    assert ours == expected


def test_a_python_file_bandit_cannot_parse_is_reported_as_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "keys.py").write_text('AWS = "AKIAIOSFODNN7EXAMPLE"\n')
    result = scan_files(tmp_path, ["broken.py", "keys.py"])
    assert [s.path for s in result.skipped] == ["broken.py"] and "bandit" in result.skipped[0].reason
    assert [(f.rule, f.path) for f in result.findings] == [("AWSKeyDetector", "keys.py")]


def test_the_scanners_own_suppression_comments_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "import subprocess  # nosec B404\n"
        "subprocess.call('ls', shell=True)  # nosec\n"
        'KEY = "AKIAIOSFODNN7EXAMPLE"  # pragma: allowlist secret\n'
    )
    assert scan_files(tmp_path, ["a.py"]).findings == []
