"""The scanners, run in-process as libraries: bandit (Python), detect-secrets (secrets in any text file)
and :mod:`.dependencies` (requirements files and ``pyproject.toml``).

:func:`scan_files` is the one entry point: the ``security_scan`` task calls it on a shard, and it can be
called directly on any folder. Paths in and out are relative to ``base`` with ``/`` separators. Nothing
here touches the network: detect-secrets' optional online verification is never turned on.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from . import dependencies
from .findings import Finding, Skipped, fingerprint, merge_findings

#: The scanners, by the name their findings carry as ``tool``.
SCANNERS = ("bandit", "detect-secrets", "dependencies")
PYTHON_SUFFIXES = (".py", ".pyw")
#: bandit's hard-coded password rules, whose messages quote the value found.
PASSWORD_RULES = frozenset({"B105", "B106", "B107"})
PASSWORD_VALUE = re.compile(r":\s*'.*'\s*$", re.S)

#: detect-secrets keeps its settings in a process-wide singleton, so one scan at a time uses it.
_SECRETS_LOCK = threading.Lock()

#: detect-secrets plugins that match a credential's own format are "high"; these heuristics are less sure.
SECRET_SEVERITY = {
    "KeywordDetector": "medium",
    "Base64HighEntropyString": "medium",
    "HexHighEntropyString": "medium",
    "IPPublicDetector": "low",
}
SECRET_CWE = 798
SECRETS_HELP_URL = "https://github.com/Yelp/detect-secrets#viewing-results"  # pragma: allowlist secret


@attrs.frozen
class ScanResult:
    """Findings (merged and sorted) and the files a scanner could not read."""

    findings: list[Finding]
    skipped: list[Skipped]


def scan_files(base: Path, paths: Sequence[str], scanners: Sequence[str] = ()) -> ScanResult:
    """Scan ``base / path`` for each path with every scanner (or those named in ``scanners``); findings
    name paths relative to ``base``."""
    ordered = sorted(set(paths))
    run = set(scanners or SCANNERS)
    skipped: list[Skipped] = []
    found: list[Finding] = []
    if "bandit" in run:
        found += run_bandit(base, [p for p in ordered if p.endswith(PYTHON_SUFFIXES)], skipped)
    if "detect-secrets" in run:
        found += run_detect_secrets(base, ordered)
    if "dependencies" in run:
        found += run_dependency_checks(base, [p for p in ordered if dependencies.is_dependency_file(p)], skipped)
    return ScanResult(findings=merge_findings(_with_fingerprints(base, found)), skipped=skipped)


def _with_fingerprints(base: Path, findings: list[Finding]) -> list[Finding]:
    cache: dict[str, list[str]] = {}
    out = []
    for finding in findings:
        if finding.path not in cache:
            try:
                text = (base / finding.path).read_text(encoding="utf-8", errors="replace")
                cache[finding.path] = text.splitlines()
            except OSError:
                cache[finding.path] = []
        lines = cache[finding.path]
        line_text = lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""
        out.append(attrs.evolve(finding, fingerprint=fingerprint(finding.tool, finding.rule, finding.path, line_text,
                                                                     finding.match_id)))
    return out


def _relative(base: Path, filename: str) -> str:
    return Path(filename).resolve().relative_to(base.resolve()).as_posix()


# --------------------------------------------------------------------------------------------------
# bandit
# --------------------------------------------------------------------------------------------------


def _import_bandit() -> tuple[Any, Any, Any]:
    """bandit's modules, imported quietly: its optional formatters (sarif needs ``sarif_om``, which we do
    not use) log an ERROR through stevedore when their dependency is missing."""
    stevedore_log = logging.getLogger("stevedore.extension")
    level = stevedore_log.level
    stevedore_log.setLevel(logging.CRITICAL)
    try:
        from bandit.core import config, docs_utils, manager
    finally:
        stevedore_log.setLevel(level)
    bandit_log = logging.getLogger("bandit")
    if bandit_log.level == logging.NOTSET:
        # bandit draws a progress bar on stdout over 50 files when its logger is at INFO.
        bandit_log.setLevel(logging.WARNING)
    return config, docs_utils, manager


def run_bandit(base: Path, paths: Sequence[str], skipped: list[Skipped]) -> list[Finding]:
    """bandit's default profile on ``paths`` (honouring ``# nosec``), as the ``bandit`` command runs it."""
    if not paths:
        return []
    bandit_config, docs_utils, bandit_manager = _import_bandit()
    manager = bandit_manager.BanditManager(bandit_config.BanditConfig(), "file", quiet=True)
    manager.files_list = [str(base / p) for p in paths]
    manager.run_tests()
    for filename, reason in manager.get_skipped():
        skipped.append(Skipped(path=_relative(base, filename), reason=f"bandit: {reason}", kind="scanner"))
    findings = []
    for issue in manager.get_issue_list():
        findings.append(
            Finding(
                tool="bandit",
                rule=issue.test_id,
                name=issue.test,
                severity=issue.severity.lower(),
                confidence=issue.confidence.lower(),
                path=_relative(base, issue.fname),
                line=int(issue.lineno),
                column=int(issue.col_offset) + 1,
                message=_redacted(issue.test_id, issue.text),
                cwe=_cwe_id(issue),
                help_url=docs_utils.get_url(issue.test_id),
            )
        )
    return findings


def _cwe_id(issue: Any) -> int | None:
    cwe_id = getattr(getattr(issue, "cwe", None), "id", None)
    return int(cwe_id) if cwe_id else None


def _redacted(rule: str, message: str) -> str:
    """bandit's hard-coded password messages quote the password; reports must not carry it further."""
    if rule in PASSWORD_RULES:
        return PASSWORD_VALUE.sub(": (value not shown)", message)
    return message


# --------------------------------------------------------------------------------------------------
# detect-secrets
# --------------------------------------------------------------------------------------------------


def run_detect_secrets(base: Path, paths: Sequence[str]) -> list[Finding]:
    """detect-secrets with every plugin and its default filters, as ``detect-secrets scan --all-files`` runs."""
    if not paths:
        return []
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import default_settings

    classes: dict[str, Any] = dict(get_mapping_from_secret_type_to_class())
    plugin_of: dict[str, str] = {kind: plugin.__name__ for kind, plugin in classes.items()}
    with _SECRETS_LOCK, default_settings():
        collection = SecretsCollection(root=str(base))
        for path in paths:
            collection.scan_file(path)
        found = [(str(filename), secret.type, secret.line_number, _match_id(secret.secret_hash))
                 for filename, secret in collection]
    findings = []
    for filename, kind, line, match_id in found:
        plugin = plugin_of.get(kind, kind.replace(" ", ""))
        severity = SECRET_SEVERITY.get(plugin, "high")
        findings.append(
            Finding(
                tool="detect-secrets",
                rule=plugin,
                name=kind,
                severity=severity,
                confidence=severity,
                path=Path(filename).as_posix(),
                line=int(line),
                message=f"Possible secret: {kind}. Remove it from the code and rotate it.",
                cwe=SECRET_CWE,
                help_url=SECRETS_HELP_URL,
                match_id=match_id,
            )
        )
    return findings


def _match_id(secret_hash: str) -> str:
    """Tells two secrets on one line apart (detect-secrets gives no column): a short hash of detect-secrets'
    own sha1 of the secret. The value itself never leaves the scanner."""
    return hashlib.sha256(f"hive-scan\0{secret_hash}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# dependency files
# --------------------------------------------------------------------------------------------------


def run_dependency_checks(base: Path, paths: Sequence[str], skipped: list[Skipped]) -> list[Finding]:
    """:mod:`.dependencies` on each requirements file and ``pyproject.toml``."""
    findings = []
    for path in paths:
        try:
            findings += dependencies.check_file(base, path)
        except OSError as exc:
            skipped.append(Skipped(path=path, reason=f"dependencies: unreadable ({exc.strerror or exc})",
                                   kind="unreadable"))
    return findings
