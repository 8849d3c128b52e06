"""Reports: SARIF 2.1.0 that validates against the official schema, JSON, the table; settings; the reducer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import CLEAN, VULNERABLE, direct_scan, sarif_errors
from hive_framework import ConfigError, HiveConfig

from hive_plugin_security_scan.findings import Finding, Skipped, reduce_shard_results
from hive_plugin_security_scan.job import ScanReport
from hive_plugin_security_scan.output import render, to_sarif
from hive_plugin_security_scan.settings import ScanSettings


def _report(root: Path, **more: Any) -> ScanReport:
    findings = direct_scan(root)
    return ScanReport(root=root, findings=findings, files_scanned=10, shards=3, nodes={"a": 2, "b": 1}, **more)


def test_sarif_of_the_vulnerable_app_validates(sarif_validator: jsonschema.Draft4Validator) -> None:
    # Given the findings of the vulnerable app, with one skipped file and one failed shard
    report = _report(VULNERABLE, skipped=[Skipped(path="logo.png", reason="binary file")],
                     failures=["app/ (3 files): TaskTimeout"])
    # When it is rendered as SARIF (through JSON text, as the command prints it)
    log = json.loads(render(report, "sarif"))
    # Then it validates against the SARIF 2.1.0 schema
    assert sarif_errors(sarif_validator, log) == []
    run = log["runs"][0]
    assert log["version"] == "2.1.0"
    assert len(run["results"]) == len(report.findings)
    # And rules are listed once each, results point at them, and paths are relative to SRCROOT
    rules = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert len(rules) == len(set(rules)) and {"B602", "AWSKeyDetector", "DEP001"} <= set(rules)
    for result in run["results"]:
        assert rules[result["ruleIndex"]] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uriBaseId"] == "SRCROOT"
        assert not location["artifactLocation"]["uri"].startswith("/")
    assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == VULNERABLE.as_uri() + "/"
    shell = next(r for r in run["results"] if r["ruleId"] == "B602")
    assert shell["level"] == "error" and shell["locations"][0]["physicalLocation"]["region"]["startLine"] == 7
    assert run["invocations"][0]["executionSuccessful"] is False


def test_sarif_of_a_clean_scan_validates_and_is_empty(sarif_validator: jsonschema.Draft4Validator) -> None:
    log = to_sarif(_report(CLEAN))
    assert sarif_errors(sarif_validator, log) == []
    assert log["runs"][0]["results"] == [] and log["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_the_schema_check_catches_a_broken_log(sarif_validator: jsonschema.Draft4Validator) -> None:
    # A control: the validator really rejects SARIF that breaks the schema
    log = to_sarif(_report(VULNERABLE))
    del log["runs"][0]["results"][0]["message"]
    log["runs"][0]["results"][1]["level"] = "critical"
    assert len(sarif_errors(sarif_validator, log)) == 2


def test_odd_paths_are_uri_encoded(sarif_validator: jsonschema.Draft4Validator) -> None:
    finding = Finding(tool="bandit", rule="B101", name="assert_used", severity="low", confidence="high",
                      path="my dir/ünï#1.py", line=3, message="assert")
    log = to_sarif(ScanReport(root=Path("/tmp/a b"), findings=[finding]))
    assert sarif_errors(sarif_validator, log) == []
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "my%20dir/%C3%BCn%C3%AF%231.py"


def test_json_and_table_output() -> None:
    report = _report(VULNERABLE)
    data = json.loads(render(report, "json"))
    assert data["root"] == str(VULNERABLE)
    assert data["summary"]["findings"] == len(data["findings"]) == len(report.findings)
    assert data["summary"]["counts"] == report.counts and data["summary"]["complete"] is True
    table = render(report, "table").splitlines()
    assert table[0].split() == ["SEVERITY", "RULE", "LOCATION", "ISSUE"]
    assert any(line.split()[:3] == ["high", "B602", "app/files.py:7"] for line in table)
    assert table[-1].startswith(f"{len(report.findings)} findings (")
    assert render(_report(CLEAN), "table") == (
        "0 findings (0 high, 0 medium, 0 low) in 10 files, 3 shards on 2 spores, 0.00s"
    )


def test_fail_on_threshold() -> None:
    report = _report(VULNERABLE)
    assert {f.severity for f in report.at_or_above("high")} == {"high"}
    assert len(report.at_or_above("low")) == len(report.findings)


def test_reducer_merges_de_duplicates_and_sorts() -> None:
    low = Finding(tool="bandit", rule="B404", name="x", severity="low", confidence="high", path="b.py", line=1,
                  message="m")
    high = Finding(tool="bandit", rule="B602", name="y", severity="high", confidence="high", path="z.py", line=9,
                   message="m")
    shard = {"findings": [low.to_dict(), high.to_dict()], "skipped": [], "files": 2, "source": "archive", "node": "a"}
    again = {"findings": [low.to_dict()], "skipped": [{"path": "c.py", "reason": "r"}], "files": 1,
             "source": "local", "node": "b"}
    reduced = reduce_shard_results([shard, again, "not a shard result"])
    assert [f["rule"] for f in reduced["findings"]] == ["B602", "B404"]
    assert reduced["counts"] == {"high": 1, "medium": 0, "low": 1}
    assert reduced["files_scanned"] == 3 and reduced["shards"] == 2
    assert reduced["sources"] == {"archive": 1, "local": 1} and reduced["nodes"] == {"a": 1, "b": 1}


def test_settings_are_checked() -> None:
    def load(section: dict[str, Any]) -> ScanSettings:
        return ScanSettings.from_config(HiveConfig(plugins={"security_scan": section}))

    assert load({}) == ScanSettings()
    assert load({"read_local": False, "exclude": ["docs/"]}).exclude == ("docs/",)
    for bad, message in [
        ({"max_shard_byte": 1}, "unknown setting"),
        ({"max_shard_bytes": 0}, "must be a whole number > 0"),
        ({"max_shard_files": "10"}, "must be a whole number > 0"),
        ({"read_local": "no"}, "must be true or false"),
        ({"task_timeout": float("nan")}, "must be a number > 0"),
        ({"exclude": "docs/"}, "list of gitignore-style patterns"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(bad)
