"""Incremental scans: each file's findings cached under its content hash, the scanners' versions and settings.

A rescan hashes every file and looks the hashes up; only the files that miss are packed and sent to spores.
After the scan the client stores each scanned file's findings (and scanner skips) under the versions the
spore that scanned it reported, so a spore with other scanner versions never feeds a cache entry that
the client's own versions would read. Entries expire after ``cache_ttl`` seconds.

Two stores: :class:`RedisCache` on a configured hive (keys ``{key_prefix}:security_scan:cache:<hash>``,
shared by every client of that hive), and :class:`FileCache`, an SQLite file, when ``hive scan`` runs on a
private Redis that disappears with the scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .findings import Finding, Skipped
from .paths import to_wire

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .inventory import FileEntry, Inventory

logger = logging.getLogger(__name__)

#: Bump when what a cache entry holds, or how findings are computed, changes.
CACHE_SCHEMA = 1
#: How the scanners are configured (part of every key): the plugin has no per-scan scanner settings yet.
SCANNER_SETTINGS = "bandit:default-profile;detect-secrets:all-plugins,default-filters;dependencies:v1"


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


@functools.cache
def scanner_versions() -> str:
    """What decides a file's findings besides its bytes: the scanners' and this plugin's versions, the
    scanner settings, and the cache schema."""
    return (
        f"schema={CACHE_SCHEMA};plugin={_version('hive-plugin-security-scan')};bandit={_version('bandit')};"
        f"detect-secrets={_version('detect-secrets')};settings={SCANNER_SETTINGS}"
    )


def entry_key(path: str, sha256: str, versions: str) -> str:
    """The cache key of one file's result: its path (which decides the scanners run), bytes and versions."""
    raw = json.dumps([to_wire(path), sha256, versions], ensure_ascii=True)
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


class FindingsCache(Protocol):
    """Where cached results live: values by key, each with a time to live."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def put_many(self, items: dict[str, bytes], ttl: float) -> None: ...


class RedisCache:
    """Cache entries in the hive's Redis under ``{prefix}:security_scan:cache:``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:security_scan:cache:"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), 1000):
            out += await self.redis.mget([self.prefix + key for key in keys[start : start + 1000]])
        return out

    async def put_many(self, items: dict[str, bytes], ttl: float) -> None:
        millis = max(int(ttl * 1000), 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.prefix + key, value, px=millis)
            await pipe.execute()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hive-scan"


class FileCache:
    """Cache entries in an SQLite file (for scans whose Redis is private and temporary)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL)")
        return db

    def _get(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.time()
        found: dict[str, bytes] = {}
        with contextlib.closing(self._connect()) as db:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT key, value FROM entries WHERE key IN ({marks}) AND expires > ?",
                                  [*chunk, now])
                found.update((key, bytes(value)) for key, value in rows)
        return [found.get(key) for key in keys]

    def _put(self, items: dict[str, bytes], ttl: float) -> None:
        now = time.time()
        with contextlib.closing(self._connect()) as db, db:
            db.execute("DELETE FROM entries WHERE expires <= ?", [now])
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                           [(key, value, now + ttl) for key, value in items.items()])

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        try:
            return await asyncio.to_thread(self._get, keys)
        except (sqlite3.Error, OSError) as exc:  # a cache that cannot be read is empty, never an error
            logger.warning("findings cache %s cannot be read (%s); scanning every file", self.path, exc)
            return [None] * len(keys)

    async def put_many(self, items: dict[str, bytes], ttl: float) -> None:
        try:
            await asyncio.to_thread(self._put, items, ttl)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("findings cache %s cannot be written (%s)", self.path, exc)


# --------------------------------------------------------------------------------------------------
# looking up and storing
# --------------------------------------------------------------------------------------------------


@attrs.define
class CacheLookup:
    """The files whose results were cached (with those results) and the files still to scan."""

    findings: list[Finding]
    skipped: list[Skipped]
    hits: int
    misses: list[FileEntry]


def _hash_files(root: Path, files: Sequence[FileEntry]) -> list[str | None]:
    digests: list[str | None] = []
    for entry in files:
        try:
            digests.append(hashlib.sha256((root / entry.path).read_bytes()).hexdigest())
        except OSError:
            digests.append(None)  # a miss: packing reports it
    return digests


async def lookup(cache: FindingsCache, inventory: Inventory) -> CacheLookup:
    """Hash every file of ``inventory`` and split it into cached results and files to scan."""
    digests = await asyncio.to_thread(_hash_files, inventory.root, inventory.files)
    versions = scanner_versions()
    keyed = [(entry, entry_key(entry.path, digest, versions)) for entry, digest in zip(inventory.files, digests,
                                                                                         strict=True) if digest]
    values = await cache.get_many([key for _, key in keyed]) if keyed else []
    hit_paths: set[str] = set()
    found = CacheLookup(findings=[], skipped=[], hits=0, misses=[])
    for (entry, _), value in zip(keyed, values, strict=True):
        if value is None:
            continue
        try:
            data = json.loads(value)
            findings = [Finding.from_dict(f) for f in data["findings"]]
            skipped = [Skipped.from_dict(s) for s in data["skipped"]]
        except (ValueError, KeyError, TypeError):
            continue  # an entry we cannot read is a miss
        found.findings += findings
        found.skipped += skipped
        found.hits += 1
        hit_paths.add(entry.path)
    found.misses = [entry for entry in inventory.files if entry.path not in hit_paths]
    return found


def entries_from_result(result: dict[str, Any], manifest: Sequence[tuple[str, str]]) -> dict[str, bytes]:
    """Cache entries for one shard's result: each manifest file's findings and scanner skips, under the
    versions the spore reported (none when it reported none)."""
    versions = result.get("versions")
    if not isinstance(versions, str) or not versions:
        return {}
    findings: dict[str, list[dict[str, Any]]] = {}
    for raw in result.get("findings", []):
        findings.setdefault(Finding.from_dict(raw).path, []).append(raw)
    skipped: dict[str, list[dict[str, Any]]] = {}
    not_scanned: set[str] = set()
    for raw in result.get("skipped", []):
        entry = Skipped.from_dict(raw)
        skipped.setdefault(entry.path, []).append(raw)
        if entry.incomplete:
            not_scanned.add(entry.path)  # a file read badly this time is scanned again next time
    return {
        entry_key(path, sha256, versions): json.dumps(
            {"findings": findings.get(path, []), "skipped": skipped.get(path, [])}, ensure_ascii=True
        ).encode("ascii")
        for path, sha256 in manifest
        if path not in not_scanned
    }
