"""Secrets in git history (``hive scan --history [REV-RANGE]``): what detect-secrets alone does not look at.

Every blob that the commits of the range add or change (``git diff-tree -r -m --root`` on each commit,
against every parent) is scanned once, however many commits hold it: blobs are de-duplicated by id, and
each is reported with the oldest commit of the range that introduced it and the path it had there. The
blobs are written into a private folder as ``<blob id>/<path>`` and split into shards like any tree, so
spores scan them in parallel; only detect-secrets runs on them (bandit and the dependency checks are about
the code as it is now). A range is what ``git rev-list`` accepts: ``HEAD`` (all history, the default),
``v1.0..HEAD``, ``--all``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .findings import Finding, Skipped
from .inventory import FileEntry, Inventory, largest_file, looks_binary
from .settings import ScanSettings

if TYPE_CHECKING:
    from .job import ScanReport

#: The scanners run on blobs from history.
HISTORY_SCANNERS = ("detect-secrets",)
#: Tree entry modes of regular files (symbolic links and submodules are not scanned).
FILE_MODES = ("100644", "100755")


class HistoryError(RuntimeError):
    """git could not list the range (not a repository, a bad range, git missing)."""


@attrs.frozen
class BlobRef:
    """A blob as first seen in the range: its id, the commit that introduced it, and its path there."""

    blob: str
    commit: str
    path: str


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    git = shutil.which("git")
    if git is None:
        raise HistoryError("git is not installed: --history needs it")
    env = {**os.environ, "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}
    done = subprocess.run([git, *args], cwd=repo, input=stdin, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise HistoryError(f"git {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def history_blobs(repo: Path, rev_range: str = "HEAD") -> list[BlobRef]:
    """Each blob the commits of ``rev_range`` add or change under ``repo`` (a repository or a folder in one,
    paths relative to it), once, with the oldest commit that introduced it."""
    commits = _git(repo, "rev-list", "--reverse", "--topo-order", *rev_range.split(), "--")
    if not commits.strip():
        return []
    raw = _git(repo, "diff-tree", "--stdin", "-r", "-z", "-m", "--no-renames", "--no-abbrev", "--root",
               "--relative", stdin=commits)
    seen: dict[str, BlobRef] = {}
    commit = ""
    tokens = iter(raw.split(b"\0"))
    for token in tokens:
        if not token:
            continue
        if not token.startswith(b":"):
            commit = token.split()[0].decode("ascii")  # "<id>" or "<id> (from <parent>)"
            continue
        path = next(tokens, b"")
        meta = token[1:].split()
        if len(meta) < 5:
            continue
        _, new_mode, _, new_blob, status = meta[:5]
        if status.startswith(b"D") or new_mode.decode() not in FILE_MODES:
            continue
        blob = new_blob.decode("ascii")
        if blob not in seen:
            seen[blob] = BlobRef(blob=blob, commit=commit, path=os.fsdecode(path))
    return list(seen.values())


def _read_blobs(repo: Path, blobs: list[BlobRef]) -> Iterator[tuple[BlobRef, bytes]]:
    """The contents of ``blobs``, through one ``git cat-file --batch``."""
    raw = _git(repo, "cat-file", "--batch", stdin=b"".join(b.blob.encode() + b"\n" for b in blobs))
    at = 0
    for ref in blobs:
        header_end = raw.index(b"\n", at)
        header = raw[at:header_end].split()
        size = int(header[2])
        start = header_end + 1
        yield ref, raw[start : start + size]
        at = start + size + 1


@contextmanager
def materialised(repo: Path, rev_range: str, settings: ScanSettings) -> Iterator[tuple[Inventory, dict[str, BlobRef]]]:
    """The range's blobs written into a private folder as ``<blob>/<path>``: an :class:`Inventory` of it
    (binary and too-large blobs skipped), and which blob each inventory path is. The folder is removed on exit."""
    blobs = history_blobs(repo, rev_range)
    limit = largest_file(settings)
    with tempfile.TemporaryDirectory(prefix="hive-scan-history-") as scratch:
        root = Path(scratch)
        inventory = Inventory(root=root, files=[], skipped=[], mode="history")
        where: dict[str, BlobRef] = {}
        for ref, data in _read_blobs(repo, blobs) if blobs else ():
            rel = f"{ref.blob}/{ref.path}"
            if len(data) > limit:
                inventory.skipped.append(Skipped(path=ref.path, reason=f"blob {ref.blob[:12]} (commit "
                                                 f"{ref.commit[:12]}) larger than {limit} bytes", kind="too-large"))
                continue
            if looks_binary(data[:8192]):
                continue  # binary blobs are many in history and never listed
            target = root / ref.blob / ref.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            inventory.files.append(FileEntry(rel, len(data)))
            where[rel] = ref
        yield inventory, where


def to_history_findings(findings: list[Finding], where: dict[str, BlobRef]) -> list[Finding]:
    """Findings on materialised blobs named by their commit and path in the repository."""
    out = []
    for finding in findings:
        ref = where.get(finding.path)
        if ref is not None:
            out.append(attrs.evolve(finding, path=ref.path, commit=ref.commit))
    return sorted(out, key=lambda f: (*f.sort_key(), f.commit))


def in_history(report: ScanReport, repo: Path, where: dict[str, BlobRef]) -> ScanReport:
    """A report on materialised blobs as a report on ``repo``'s history: findings and skipped files named by
    their commit and path there, the repository as root."""
    skipped = []
    for entry in report.skipped:
        ref = where.get(entry.path)
        skipped.append(attrs.evolve(entry, path=ref.path, reason=f"{entry.reason} (commit {ref.commit[:12]})")
                       if ref else entry)
    return attrs.evolve(report, root=repo, findings=to_history_findings(report.findings, where), skipped=skipped)
