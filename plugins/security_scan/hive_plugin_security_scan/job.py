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
from hive_framework import HiveConfig, ItemOutcome, MapJob

from .archive import pack, release, store
from .cache import CacheLookup, FindingsCache, entries_from_result
from .cache import lookup as cache_lookup
from .findings import Finding, Skipped, merge_findings, reduce_shard_results, severity_counts, severity_rank
from .inventory import Excluded, Inventory, plan_shards, shard_label
from .paths import display
from .settings import ScanSettings
from .task import TASK_TYPE, Shard

if TYPE_CHECKING:
    from pathlib import Path

    from hive_framework import MessageBroker
    from redis.asyncio import Redis


#: Files named in the summary line when some could not be scanned (the rest are in the report).
SUMMARY_NAMES = 3


class Progress(Protocol):
    """What :func:`run_scan` reports while it works (the CLI draws a progress bar with it)."""

    def start(self, shards: int) -> None: ...

    def advance(self, outcome: ItemOutcome) -> None: ...


@attrs.define(kw_only=True)
class ScanReport:
    """A finished scan: merged findings and everything needed to judge how complete it was."""

    root: Path
    findings: list[Finding]
    #: Files covered: scanned now, or whose results came from the cache.
    files_scanned: int = 0
    #: Of those, files whose results came from the cache (unchanged since a scan with the same scanners).
    cached: int = 0
    skipped: list[Skipped] = attrs.field(factory=list)
    ignored: int = 0
    #: Files and folders left out by the default excludes or the exclude patterns (listed, never silent).
    excluded: list[Excluded] = attrs.field(factory=list)
    shards: int = 0
    #: One line per shard that failed or did not finish: its label and the error.
    failures: list[str] = attrs.field(factory=list)
    nodes: dict[str, int] = attrs.field(factory=dict)
    sources: dict[str, int] = attrs.field(factory=dict)
    duration_s: float = 0.0

    @property
    def not_scanned(self) -> list[Skipped]:
        """Files skipped because they could not be scanned at all (too large, unreadable)."""
        return [s for s in self.skipped if s.incomplete]

    @property
    def complete(self) -> bool:
        """False when a shard failed or a file or folder was skipped as too large or unreadable."""
        return not self.failures and not self.not_scanned

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
            "cached": self.cached,
            "skipped": len(self.skipped),
            "not_scanned": len(self.not_scanned),
            "excluded": len(self.excluded),
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
        line = (
            f"{len(self.findings)} finding{plural} ({counts['high']} high, {counts['medium']} medium, "
            f"{counts['low']} low) in {self.files_scanned} files{f' ({self.cached} cached)' if self.cached else ''}, "
            f"{self.shards} shard{'s' if self.shards != 1 else ''} "
            f"on {spores} spore{'s' if spores != 1 else ''}, {self.duration_s:.2f}s"
        )
        missed = self.not_scanned
        if missed:
            shown = ", ".join(f"{display(s.path)} ({s.kind})" for s in missed[:SUMMARY_NAMES])
            more = f" and {len(missed) - SUMMARY_NAMES} more" if len(missed) > SUMMARY_NAMES else ""
            line += f"; INCOMPLETE: {len(missed)} not scanned: {shown}{more}"
        if self.excluded:
            line += f"; {len(self.excluded)} path{'s' if len(self.excluded) != 1 else ''} excluded"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": display(str(self.root)),
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings],
            "skipped": [s.to_dict() for s in self.skipped],
            "excluded": [e.to_dict() for e in self.excluded],
        }


def pack_shards(inventory: Inventory, shards: int, settings: ScanSettings,
                scanners: tuple[str, ...] = ()) -> tuple[list[tuple[Shard, bytes]], list[Skipped]]:
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
            skipped += [Skipped(path=p, reason="does not fit in a shard (max_shard_bytes)", kind="too-large")
                        for p in paths]
        elif packed.manifest:
            shard = Shard(archive=packed.sha256, manifest=packed.manifest, root=str(inventory.root), host=host,
                          scanners=scanners,
                          label=shard_label([entry.path for entry in packed.manifest]))
            packed_shards.append((shard, packed.data))
    return packed_shards, skipped


@contextlib.asynccontextmanager
async def uploaded_shards(
    redis: Redis, config: HiveConfig, inventory: Inventory, *, shards: int, settings: ScanSettings,
    skipped: list[Skipped] | None = None, scanners: tuple[str, ...] = (),
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pack the inventory into shards, store their archives in Redis, and yield the task payloads.

    The archives are released on the way out (deleted unless another scan of the same content holds
    them). Files that could not be packed are appended to ``skipped`` when given.
    """
    packed_shards, unpacked = await asyncio.to_thread(pack_shards, inventory, shards, settings, scanners)
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
    broker: MessageBroker | None,
    inventory: Inventory,
    *,
    shards: int,
    timeout: float | None = None,
    settings: ScanSettings | None = None,
    progress: Progress | None = None,
    cache: FindingsCache | None = None,
    cached: CacheLookup | None = None,
    scanners: tuple[str, ...] = (),
) -> ScanReport:
    """Scan ``inventory`` on the hive's spores: one ``security_scan`` task per shard, then the reducer.

    With a ``cache``, files whose results it holds are not scanned again (``cached`` is the lookup when
    the caller already made it), and the results of the files scanned now are stored in it. ``broker``
    may be None only when every file's results are cached. ``scanners`` limits the scanners run (all
    when empty); give no cache then.
    """
    started = time.monotonic()
    if settings is None:
        assert broker is not None
        settings = ScanSettings.from_config(broker.config)
    if cache is not None and cached is None:
        cached = await cache_lookup(cache, inventory)
    to_scan = inventory if cached is None else attrs.evolve(inventory, files=cached.misses)
    skipped = list(inventory.skipped)
    outcomes: list[ItemOutcome] = []
    if to_scan.files:
        if broker is None:
            raise ValueError("run_scan needs a broker when files are to be scanned")
        async with uploaded_shards(
            broker.redis, broker.config, to_scan, shards=shards, settings=settings, skipped=skipped,
            scanners=scanners,
        ) as payloads:
            if progress is not None:
                progress.start(len(payloads))
            if payloads:
                # Largest shards first: spores claim in queue order, so the last shard to finish is a small one.
                job = MapJob(broker, TASK_TYPE, payloads, timeout=settings.task_timeout,
                             description=f"security scan of {display(str(inventory.root))}")
                await job.submit()
                async for outcome in job.stream(timeout):
                    if progress is not None:
                        progress.advance(outcome)
                await job.cancel_unfinished()
                outcomes = job.ordered()
    results = [o.result for o in outcomes if o.ok]
    reduced = reduce_shard_results(results)
    if cache is not None:
        await store_results(cache, outcomes, settings.cache_ttl)
    failures = [f"{o.item.get('label', o.task_id)}: {o.error or o.status}" for o in outcomes if not o.ok]
    findings = [Finding.from_dict(f) for f in reduced["findings"]]
    reduced_skipped = [Skipped.from_dict(s) for s in reduced["skipped"]]
    if cached is not None:
        findings = merge_findings([*findings, *cached.findings])
        reduced_skipped += cached.skipped
    return ScanReport(
        root=inventory.root,
        findings=findings,
        files_scanned=reduced["files_scanned"] + (cached.hits if cached else 0),
        cached=cached.hits if cached else 0,
        skipped=sorted({(s.path, s.reason): s for s in [*skipped, *reduced_skipped]}.values(),
                       key=lambda s: (s.path, s.reason)),
        ignored=inventory.ignored,
        excluded=list(inventory.excluded),
        shards=len(outcomes),
        failures=failures,
        nodes=reduced["nodes"],
        sources=reduced["sources"],
        duration_s=time.monotonic() - started,
    )


async def store_results(cache: FindingsCache, outcomes: list[ItemOutcome], ttl: float) -> None:
    """Store the results of the shards that finished, file by file, in ``cache``."""
    items: dict[str, bytes] = {}
    for outcome in outcomes:
        if outcome.ok and isinstance(outcome.result, dict):
            shard = Shard.from_payload(outcome.item)
            items.update(entries_from_result(outcome.result, [(e.path, e.sha256) for e in shard.manifest]))
    if items:
        await cache.put_many(items, ttl)
