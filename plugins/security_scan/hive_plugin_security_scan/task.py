"""The ``security_scan`` task type: scan one shard on a spore, from its archive or, on the same host, in place."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path
from typing import Any

import attrs
from hive_framework import TaskContext, task

from .archive import ManifestEntry, UnsafeArchive, fetch, unpack, verify_local
from .cache import scanner_versions
from .findings import REDUCER
from .paths import BadWirePath, from_wire, to_wire
from .scanners import SCANNERS, ScanResult, scan_files
from .settings import ScanSettings

TASK_TYPE = "security_scan"


@attrs.frozen(kw_only=True)
class Shard:
    """One task's payload: a shard's archive (by sha256), its manifest, and where the files came from."""

    archive: str  #: sha256 of the tar.gz stored in Redis
    manifest: tuple[ManifestEntry, ...]
    root: str  #: the scanned folder on the client (absolute)
    host: str  #: the client's host name
    label: str = ""
    #: The scanners to run (:data:`~.scanners.SCANNERS`); empty for all of them.
    scanners: tuple[str, ...] = ()

    @property
    def paths(self) -> list[str]:
        return [entry.path for entry in self.manifest]

    def to_payload(self) -> dict[str, Any]:
        extra = {"scanners": list(self.scanners)} if self.scanners else {}
        return extra | {
            "archive": self.archive,
            "manifest": [entry.to_list() for entry in self.manifest],
            "root": to_wire(self.root),
            "host": self.host,
            "label": self.label,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Shard:
        try:
            archive, raw, root, host = payload["archive"], payload["manifest"], payload["root"], payload["host"]
        except KeyError as exc:
            raise UnsafeArchive(f"not a security_scan shard: the payload lacks {exc}") from None
        if not isinstance(archive, str) or len(archive) != 64 or not isinstance(raw, list) or not raw:
            raise UnsafeArchive("not a security_scan shard: needs an archive sha256 and a non-empty manifest")
        return cls(
            archive=archive,
            manifest=tuple(ManifestEntry.from_list(entry) for entry in raw),
            root=_root(root),
            host=str(host),
            label=str(payload.get("label", "")),
            scanners=_scanners(payload.get("scanners", [])),
        )

    def check_limits(self, settings: ScanSettings) -> None:
        """Refuse a shard over this spore's limits before fetching or unpacking anything."""
        total = sum(entry.size for entry in self.manifest)
        if total > settings.max_shard_bytes or len(self.manifest) > settings.max_shard_files:
            raise UnsafeArchive(
                f"shard of {len(self.manifest)} files and {total} bytes is over this spore's limits "
                f"(max_shard_files={settings.max_shard_files}, max_shard_bytes={settings.max_shard_bytes})"
            )


def _scanners(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(name, str) and name in SCANNERS for name in raw):
        raise UnsafeArchive(f"not a security_scan shard: scanners must be a list of {', '.join(SCANNERS)}")
    return tuple(raw)


def _root(raw: Any) -> str:
    try:
        return from_wire(raw)
    except BadWirePath as exc:
        raise UnsafeArchive(f"not a security_scan shard: {exc}") from None


def can_read_in_place(shard: Shard, settings: ScanSettings) -> bool:
    """True when this spore may scan the client's files where they are: same host, same bytes."""
    root = Path(shard.root)
    return (
        settings.read_local
        and shard.host == socket.gethostname()
        and root.is_absolute()
        and root.is_dir()
        and verify_local(root, shard.manifest)
    )


def scan_archive(data: bytes, shard: Shard) -> ScanResult:
    """Unpack the shard into a private temporary folder, scan it there, and remove the folder."""
    with tempfile.TemporaryDirectory(prefix="hive-scan-") as scratch:
        base = Path(scratch)
        unpack(data, shard.manifest, base)
        return scan_files(base, shard.paths, shard.scanners)


# bandit and detect-secrets are pure Python: a spore process gains nothing from a second shard at once (the GIL),
# and a shard it holds waiting is one another spore could run. More spores use more cores; a spore's other
# slots stay free for other task types. [limits.security_scan] concurrency = N overrides it per spore.
@task(TASK_TYPE, priority="high_priority", timeout=600, max_retries=1, reducer=REDUCER, concurrency=1)
async def security_scan(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Scan one shard of a folder with bandit, detect-secrets and the dependency-file checks."""
    shard = Shard.from_payload(payload)
    settings = ScanSettings.from_config(context.config)
    shard.check_limits(settings)
    if await asyncio.to_thread(can_read_in_place, shard, settings):
        source = "local"
        result = await asyncio.to_thread(scan_files, Path(shard.root), shard.paths, shard.scanners)
    else:
        source = "archive"
        data = await fetch(context.redis, context.config, shard.archive)
        result = await asyncio.to_thread(scan_archive, data, shard)
    return {
        "findings": [finding.to_dict() for finding in result.findings],
        "skipped": [entry.to_dict() for entry in result.skipped],
        "files": len(shard.manifest),
        "source": source,
        "node": context.node_name,
        "label": shard.label,
        "versions": scanner_versions(),
    }
