"""How a :class:`~.job.ScanReport` is shown: a table for people, JSON, or SARIF 2.1.0 for code-scanning tools."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from .findings import Finding, severity_rank
from .paths import display, fs_bytes

if TYPE_CHECKING:
    from .job import ScanReport

FORMATS = ("table", "json", "sarif")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "hive-security-scan"
TOOL_URI = "https://pypi.org/project/hive-plugin-security-scan/"
#: SARIF levels and GitHub's ``security-severity`` scores (0-10) for our severities.
SARIF_LEVEL = {"high": "error", "medium": "warning", "low": "note"}
SECURITY_SEVERITY = {"high": "8.0", "medium": "5.5", "low": "2.0"}
COLOURS = {"high": "red", "medium": "yellow", "low": "cyan"}


def plugin_version() -> str:
    try:
        return version("hive-plugin-security-scan")
    except PackageNotFoundError:
        return "0+unknown"


def render(report: ScanReport, fmt: str, *, colour: bool = False) -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
    if fmt == "sarif":
        return json.dumps(to_sarif(report), indent=2, ensure_ascii=False)
    return render_table(report, colour=colour)


# --------------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------------


def render_table(report: ScanReport, *, colour: bool = False) -> str:
    """One row per finding, most severe first, then the summary line."""
    lines = []
    if report.findings:
        rows = [(f.severity, f.rule, f"{display(f.path)}:{f.line}" + (f" @{f.commit[:12]}" if f.commit else ""),
                 f.message) for f in report.findings]
        headers = ("SEVERITY", "RULE", "LOCATION")
        widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
        lines.append(f"{'SEVERITY':<{widths[0]}}  {'RULE':<{widths[1]}}  {'LOCATION':<{widths[2]}}  ISSUE")
        for severity, rule, location, message in rows:
            shown = f"{severity:<{widths[0]}}"
            if colour:
                shown = click.style(shown, fg=COLOURS[severity], bold=severity == "high")
            lines.append(f"{shown}  {rule:<{widths[1]}}  {location:<{widths[2]}}  {message}")
        lines.append("")
    for failure in report.failures:
        lines.append(f"NOT SCANNED: {failure}")
    for skipped in report.not_scanned:
        lines.append(f"NOT SCANNED: {display(skipped.path)}: {skipped.reason}")
    for excluded in report.excluded:
        lines.append(f"EXCLUDED: {display(excluded.path)} (pattern {excluded.pattern!r}, {excluded.source})")
    lines.append(report.summary_line())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# SARIF 2.1.0
# --------------------------------------------------------------------------------------------------


def _rule(findings: list[Finding]) -> dict[str, Any]:
    """The SARIF ``reportingDescriptor`` of one rule, from its findings (the worst severity sets its level)."""
    first = findings[0]
    worst = max((f.severity for f in findings), key=severity_rank)
    tags = ["security", first.tool]
    if first.cwe:
        tags.append(f"external/cwe/cwe-{first.cwe}")
    rule: dict[str, Any] = {
        "id": first.rule,
        "name": first.name,
        "shortDescription": {"text": f"{first.tool} {first.rule}: {first.name}"},
        "defaultConfiguration": {"level": SARIF_LEVEL[worst]},
        "properties": {"tags": tags, "security-severity": SECURITY_SEVERITY[worst], "tool": first.tool},
    }
    if first.help_url:
        rule["helpUri"] = first.help_url
    return rule


def _result(finding: Finding, rule_index: int) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": max(finding.line, 1)}
    if finding.column > 0:
        region["startColumn"] = finding.column
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": SARIF_LEVEL[finding.severity],
        "message": {"text": finding.message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": quote(fs_bytes(finding.path)), "uriBaseId": "SRCROOT"},
                    "region": region,
                }
            }
        ],
        "partialFingerprints": {"hiveSecurityScan/v1": finding.fingerprint},
        "properties": {"tool": finding.tool, "severity": finding.severity, "confidence": finding.confidence}
        | ({"commit": finding.commit} if finding.commit else {}),
    }


def to_sarif(report: ScanReport) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run: every finding, paths relative to ``SRCROOT`` (the scanned folder)."""
    by_rule: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_rule.setdefault(finding.rule, []).append(finding)
    rule_ids = sorted(by_rule)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    notifications = [
        {"level": "error", "message": {"text": f"shard not scanned: {failure}"}} for failure in report.failures
    ] + [
        {"level": "error", "message": {"text": f"file not scanned: {display(s.path)}: {s.reason}"}}
        for s in report.not_scanned
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": plugin_version(),
                        "informationUri": TOOL_URI,
                        "rules": [_rule(by_rule[rule_id]) for rule_id in rule_ids],
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": report.root.as_uri().rstrip("/") + "/"}},
                "invocations": [
                    {"executionSuccessful": report.complete, "toolExecutionNotifications": notifications}
                ],
                "results": [_result(f, index[f.rule]) for f in report.findings],
                "properties": {
                    "counts": report.counts,
                    "filesScanned": report.files_scanned,
                    "skipped": [s.to_dict() for s in report.skipped],
                    "excluded": [e.to_dict() for e in report.excluded],
                },
            }
        ],
    }
