"""What a scan reports: :class:`Finding` and :class:`Skipped`, and the reducer that merges shard results."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs

from .paths import display, from_wire, is_clean, to_wire

#: Beside ``path`` in a finding's or skipped file's dict when the name is not UTF-8: its exact bytes, base64.
PATH_BYTES = "path_bytes_b64"

#: Severities from least to most severe; ``--fail-on`` and sorting use this order.
SEVERITIES = ("low", "medium", "high")
#: The reducer that merges shard results (the ``security_scan`` task type's default reducer).
REDUCER = "security_findings"


def severity_rank(severity: str) -> int:
    """0 for low, 1 for medium, 2 for high; :class:`ValueError` for anything else."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}") from None


def _severity(inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    severity_rank(value)


@attrs.frozen(kw_only=True)
class Finding:
    """One issue at one place. ``path`` is relative to the scanned folder, with ``/`` separators.

    A finding never holds a secret's value: detect-secrets findings name the kind of secret only.
    """

    tool: str  #: "bandit", "detect-secrets" or "dependencies"
    rule: str  #: the tool's rule id: "B602", "AWSKeyDetector", "DEP001"...
    name: str  #: the rule's short name: "subprocess_popen_with_shell_equals_true", "AWS Access Key"...
    severity: str = attrs.field(validator=_severity)
    confidence: str = attrs.field(validator=_severity)
    path: str
    line: int
    column: int = 0  #: 1-based; 0 when the tool does not say
    message: str
    cwe: int | None = None
    help_url: str = ""
    #: Stable across line moves: a hash of tool, rule, path and the flagged line's text.
    fingerprint: str = ""
    #: Tells apart distinct findings of one rule on one line (two keys on one line): a short hash of what
    #: matched (for detect-secrets, of the secret's own hash), never the value. Empty when the tool's
    #: column already does.
    match_id: str = ""
    #: For a finding in git history (``hive scan --history``): the commit that added the blob.
    commit: str = ""

    def key(self) -> tuple[str, str, str, int, int, str, str]:
        """Two findings with the same key are the same finding (kept once)."""
        return (self.tool, self.rule, self.path, self.line, self.column, self.match_id, self.commit)

    def sort_key(self) -> tuple[int, str, int, int, str, str]:
        """Most severe first, then by place."""
        return (-severity_rank(self.severity), self.path, self.line, self.column, self.tool, self.rule)

    def to_dict(self) -> dict[str, Any]:
        return _path_out(attrs.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(**_path_in(data))


@attrs.frozen(kw_only=True)
class Skipped:
    """A file that was not scanned (or not by every scanner), and why."""

    path: str
    reason: str
    #: Why, as a word: "binary", "symlink", "too-large", "unreadable", "scanner" (a scanner could not parse
    #: it). Files skipped as too large or unreadable make a scan incomplete (exit status 3).
    kind: str = "other"

    @property
    def incomplete(self) -> bool:
        """True when skipping this file means part of the tree was not scanned at all."""
        return self.kind in INCOMPLETE_KINDS

    def to_dict(self) -> dict[str, Any]:
        return _path_out(attrs.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Skipped:
        return cls(**_path_in(data))


#: Skip kinds that leave part of the tree unscanned.
INCOMPLETE_KINDS = frozenset({"too-large", "unreadable"})


def _path_out(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with a printable ``path``, plus its exact bytes (base64) when the name is not UTF-8."""
    path = data["path"]
    if not is_clean(path):
        wire = to_wire(path)
        assert isinstance(wire, dict)
        data = {**data, "path": display(path), PATH_BYTES: wire["b64"]}
    return data


def _path_in(data: dict[str, Any]) -> dict[str, Any]:
    """The reverse of :func:`_path_out`: the exact path back from its bytes when they are given."""
    data = dict(data)
    raw = data.pop(PATH_BYTES, None)
    data["path"] = from_wire({"b64": raw}) if raw is not None else from_wire(data["path"])
    return data


def fingerprint(tool: str, rule: str, path: str, line_text: str, match_id: str = "") -> str:
    """A hash identifying a finding by what the line says rather than where it is."""
    normalised = " ".join(line_text.split())
    text = f"{tool}\0{rule}\0{path}\0{normalised}" + (f"\0{match_id}" if match_id else "")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """De-duplicate (by :meth:`Finding.key`) and sort, most severe first."""
    unique: dict[tuple[str, str, str, int, int, str, str], Finding] = {}
    for finding in findings:
        unique.setdefault(finding.key(), finding)
    return sorted(unique.values(), key=Finding.sort_key)


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    """``{"high": n, "medium": n, "low": n}``, every severity present."""
    counts = Counter(f.severity for f in findings)
    return {severity: counts.get(severity, 0) for severity in reversed(SEVERITIES)}


def reduce_shard_results(results: list[Any]) -> dict[str, Any]:
    """The ``security_findings`` reducer: merge shard results into one report (plain JSON data).

    Each result is what the ``security_scan`` task returns: ``findings``, ``skipped``, ``files``, ``source``
    and ``node``. Findings are de-duplicated and sorted most severe first.
    """
    findings: list[Finding] = []
    skipped: dict[str, Skipped] = {}
    files = 0
    sources: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for result in results:
        if not isinstance(result, dict):
            continue
        findings.extend(Finding.from_dict(f) for f in result.get("findings", []))
        for raw in result.get("skipped", []):
            entry = Skipped.from_dict(raw)
            skipped.setdefault(entry.path + "\0" + entry.reason, entry)
        files += int(result.get("files", 0))
        sources[str(result.get("source", "?"))] += 1
        nodes[str(result.get("node", "?"))] += 1
    merged = merge_findings(findings)
    return {
        "findings": [f.to_dict() for f in merged],
        "counts": severity_counts(merged),
        "files_scanned": files,
        "skipped": [s.to_dict() for s in sorted(skipped.values(), key=lambda s: (s.path, s.reason))],
        "shards": len([r for r in results if isinstance(r, dict)]),
        "sources": dict(sorted(sources.items())),
        "nodes": dict(sorted(nodes.items())),
    }
