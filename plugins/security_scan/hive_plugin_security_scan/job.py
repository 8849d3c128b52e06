"""The client side of a scan: pack and upload the shards, run them as one map job, reduce the results.

:func:`uploaded_shards` gives the task payloads (for :class:`~hive_framework.ParallelSkill` or any map
job) and removes the archives from Redis afterwards; :func:`run_scan` does the whole scan with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from hive_framework import HiveConfig
from hive_framework.jobs import ItemOutcome, MapJob

from .archive import pack, release, store
from .findings import REDUCER, Finding, Skipped, severity_counts, severity_rank
from .inventory import Inventory, plan_shards, shard_label
from .settings import ScanSettings
from .task import TASK_TYPE, Shard

if TYPE_CHECKING:
    from pathlib import Path

    from hive_framework import MessageBroker
    from redis.asyncio import Redis


class Progress(Protocol):
    """What :func:`run_scan` reports while it works (the CLI draws a progress bar with it)."""

    def start(self, shards: int) -> None: ...

    def advance(self, outcome: ItemOutcome) -> None: ...


@attrs.define(kw_only=True)
class ScanReport:
    """A finished scan: merged findings and everything needed to judge how complete it was."""

    root: Path
    findings: list[Finding]
    files_scanned: int = 0
    skipped: list[Skipped] = attrs.field(factory=list)
    ignored: int = 0
    shards: int = 0
    #: One line per shard that failed or did not finish: its label and the error.
    failures: list[str] = attrs.field(factory=list)
    nodes: dict[str, int] = attrs.field(factory=dict)
    sources: dict[str, int] = attrs.field(factory=dict)
    duration_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failures

    @property
    def counts(self) -> dict[str, int]:
        return severity_counts(self.findings)

    def at_or_above(self, severity: str) -> list[Finding]:
        rank = severity_rank(severity)
        return [f for f in self.findings if severity_rank(f.severity) >= rank]

    def summary(self) -> dict[str, Any]:
        return {
            "findings": len(self.findings),
            "counts": self.counts,
            "files_scanned": self.files_scanned,
            "skipped": len(self.skipped),
            "ignored": self.ignored,
            "shards": self.shards,
            "nodes": self.nodes,
            "sources": self.sources,
            "duration_s": round(self.duration_s, 3),
            "complete": self.complete,
            "failures": self.failures,
        }

    def summary_line(self) -> str:
        counts = self.counts
        plural = "" if len(self.findings) == 1 else "s"
        spores = len(self.nodes)
        return (
            f"{len(self.findings)} finding{plural} ({counts['high']} high, {counts['medium']} medium, "
            f"{counts['low']} low) in {self.files_scanned} files, {self.shards} shard{'s' if self.shards != 1 else ''} "
            f"on {spores} spore{'s' if spores != 1 else ''}, {self.duration_s:.2f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def pack_shards(inventory: Inventory, shards: int, settings: ScanSettings) -> tuple[list[tuple[Shard, bytes]],
                                                                                      list[Skipped]]:
    """Plan about ``shards`` shards and pack each: (shard, its archive) pairs, and the files left out.

    A shard over ``max_shard_bytes`` after packing (compressed, or its files grew since they were listed)
    is halved until it fits, as spores refuse bigger ones; a single file that still does not fit is skipped.
    """
    host = socket.gethostname()
    packed_shards: list[tuple[Shard, bytes]] = []
    skipped: list[Skipped] = []
    pending = [[f.path for f in group] for group in plan_shards(inventory.files, shards, settings)]
    while pending:
        paths = pending.pop(0)
        packed, unreadable = pack(inventory.root, paths)
        too_big = max(len(packed.data), sum(e.size for e in packed.manifest)) > settings.max_shard_bytes
        if too_big and len(paths) > 1:
            pending[:0] = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
            continue
        skipped += unreadable
        if too_big:
            skipped += [Skipped(path=p, reason="does not fit in a shard (max_shard_bytes)") for p in paths]
        elif packed.manifest:
            shard = Shard(archive=packed.sha256, manifest=packed.manifest, root=str(inventory.root), host=host,
                          label=shard_label([entry.path for entry in packed.manifest]))
            packed_shards.append((shard, packed.data))
    return packed_shards, skipped


@contextlib.asynccontextmanager
async def uploaded_shards(
    redis: Redis, config: HiveConfig, inventory: Inventory, *, shards: int, settings: ScanSettings,
    skipped: list[Skipped] | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pack the inventory into shards, store their archives in Redis, and yield the task payloads.

    The archives are released on the way out (deleted unless another scan of the same content holds
    them). Files that could not be packed are appended to ``skipped`` when given.
    """
    packed_shards, unpacked = await asyncio.to_thread(pack_shards, inventory, shards, settings)
    if skipped is not None:
        skipped.extend(unpacked)
    keys: list[str] = []
    try:
        for shard, data in packed_shards:
            keys.append(await store(redis, config, shard.archive, data, settings.archive_ttl))
        yield [shard.to_payload() for shard, _ in packed_shards]
    finally:
        for key in keys:
            await asyncio.shield(release(redis, key))


async def run_scan(
    broker: MessageBroker,
    inventory: Inventory,
    *,
    shards: int,
    timeout: float | None = None,
    settings: ScanSettings | None = None,
    progress: Progress | None = None,
) -> ScanReport:
    """Scan ``inventory`` on the hive's spores: one ``security_scan`` task per shard, then the reducer."""
    started = time.monotonic()
    settings = settings or ScanSettings.from_config(broker.config)
    skipped = list(inventory.skipped)
    outcomes: list[ItemOutcome] = []
    async with uploaded_shards(
        broker.redis, broker.config, inventory, shards=shards, settings=settings, skipped=skipped
    ) as payloads:
        if progress is not None:
            progress.start(len(payloads))
        if payloads:
            job = MapJob(broker, TASK_TYPE, payloads, description=f"security scan of {inventory.root}",
                         timeout=settings.task_timeout)
            await job.submit()
            async for outcome in job.stream(timeout):
                if progress is not None:
                    progress.advance(outcome)
            await job.cancel_unfinished()
            outcomes = job.ordered()
    reduced = broker.kernel.reduce(REDUCER, [o.result for o in outcomes if o.ok])
    failures = [f"{o.item.get('label', o.task_id)}: {o.error or o.status}" for o in outcomes if not o.ok]
    return ScanReport(
        root=inventory.root,
        findings=[Finding.from_dict(f) for f in reduced["findings"]],
        files_scanned=reduced["files_scanned"],
        skipped=sorted([*skipped, *(Skipped(**s) for s in reduced["skipped"])], key=lambda s: (s.path, s.reason)),
        ignored=inventory.ignored,
        shards=len(outcomes),
        failures=failures,
        nodes=reduced["nodes"],
        sources=reduced["sources"],
        duration_s=time.monotonic() - started,
    )
