"""Shards travel as content-addressed tar.gz archives stored in Redis: no shared disk is needed.

:func:`pack` builds a byte-for-byte reproducible archive of a shard's files and the manifest of what it
holds (path, sha256, size). The archive is stored under its own sha256 (:func:`store`), with a reference
count so that two scans of the same content never delete each other's archive (:func:`release`), and a
TTL so that a client that dies leaves nothing behind for long.

A spore fetches it (:func:`fetch`, which checks the hash) and unpacks it with :func:`unpack`, which
accepts exactly the manifest's regular files: absolute paths, ``..``, links, devices, duplicates, extra
or missing members, wrong sizes or hashes are all refused (:class:`UnsafeArchive`) before anything is
written outside the destination folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import attrs
from hive_framework import HiveConfig
from redis.exceptions import WatchError

from .findings import Skipped
from .paths import BadWirePath, from_wire, to_wire

if TYPE_CHECKING:
    from redis.asyncio import Redis


WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(ValueError):
    """A shard archive or manifest that does not match, or that would write outside its folder."""


@attrs.frozen
class ManifestEntry:
    """One file of a shard: path relative to the scanned folder, sha256 of its bytes, size in bytes."""

    path: str
    sha256: str
    size: int

    def to_list(self) -> list[Any]:
        return [to_wire(self.path), self.sha256, self.size]

    @classmethod
    def from_list(cls, raw: Any) -> ManifestEntry:
        if not (isinstance(raw, list | tuple) and len(raw) == 3):
            raise UnsafeArchive(f"bad manifest entry {raw!r}: expected [path, sha256, size]")
        wire_path, digest, size = raw
        try:
            path = from_wire(wire_path)
        except BadWirePath as exc:
            raise UnsafeArchive(str(exc)) from None
        if not isinstance(digest, str) or len(digest) != 64 or isinstance(size, bool) or not isinstance(size, int):
            raise UnsafeArchive(f"bad manifest entry {raw!r}")
        return cls(check_member_path(path), digest, size)


@attrs.frozen
class PackedShard:
    """A shard's archive (tar.gz bytes), its sha256 and the manifest of the files in it."""

    data: bytes
    sha256: str
    manifest: tuple[ManifestEntry, ...]


def check_member_path(path: Any) -> str:
    """``path`` when it is a safe relative POSIX path (no absolute path, ``..``, empty or ``.`` part)."""
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        raise UnsafeArchive(f"unsafe path {path!r}")
    if PurePosixPath(path).is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise UnsafeArchive(f"unsafe path {path!r}: must be relative, without '.' or '..' parts")
    if WINDOWS_DRIVE.match(path):
        raise UnsafeArchive(f"unsafe path {path!r}: starts with a drive")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(root: Path, paths: Sequence[str]) -> tuple[PackedShard, list[Skipped]]:
    """A reproducible tar.gz of ``root/path`` for each path (sorted; no owners, times or modes recorded).

    The manifest is built from the bytes actually archived, so a file changing during the scan cannot
    make the archive and its manifest disagree. Files that cannot be read any more are left out and
    returned as skipped.
    """
    raw = io.BytesIO()
    manifest: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(paths):
            try:
                data = (root / check_member_path(path)).read_bytes()
            except OSError as exc:
                skipped.append(Skipped(path=path, reason=f"unreadable: {exc.strerror or exc}", kind="unreadable"))
                continue
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
            manifest.append(ManifestEntry(path, sha256_bytes(data), len(data)))
    data = raw.getvalue()
    return PackedShard(data=data, sha256=sha256_bytes(data), manifest=tuple(manifest)), skipped


def unpack(data: bytes, manifest: Sequence[ManifestEntry], dest: Path) -> None:
    """Write the manifest's files from archive ``data`` into the (empty) folder ``dest``, refusing anything else."""
    expected = {entry.path: entry for entry in manifest}
    if len(expected) != len(manifest):
        raise UnsafeArchive("the manifest lists a path twice")
    dest = dest.resolve()
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = check_member_path(member.name)
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "non-regular file"
                    raise UnsafeArchive(f"{name}: a {kind} (only regular files are accepted)")
                entry = expected.get(name)
                if entry is None or name in seen:
                    raise UnsafeArchive(f"{name}: not in the manifest, or present twice")
                if member.size != entry.size:
                    raise UnsafeArchive(f"{name}: {member.size} bytes, the manifest says {entry.size}")
                handle = tar.extractfile(member)
                if handle is None:
                    raise UnsafeArchive(f"{name}: cannot be read")
                content = handle.read()
                if sha256_bytes(content) != entry.sha256:
                    raise UnsafeArchive(f"{name}: its sha256 does not match the manifest")
                target = dest.joinpath(*name.split("/"))
                if dest not in target.parents:  # unreachable after check_member_path; kept as a last guard
                    raise UnsafeArchive(f"{name}: would be written outside the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:  # never follows or overwrites anything already there
                    out.write(content)
                seen.add(name)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise UnsafeArchive(f"the archive cannot be unpacked: {exc}") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise UnsafeArchive(f"the archive lacks {len(missing)} file(s) of its manifest, e.g. {missing[0]}")


def verify_local(root: Path, manifest: Sequence[ManifestEntry]) -> bool:
    """True when every manifest file exists under ``root`` as a regular file (not a link) with that hash."""
    for entry in manifest:
        path = root.joinpath(*entry.path.split("/"))
        try:
            info = path.lstat()
            if not path.is_file() or path.is_symlink() or info.st_size != entry.size:
                return False
            if any(parent.is_symlink() for parent in path.parents if root in parent.parents):
                return False
            if sha256_bytes(path.read_bytes()) != entry.sha256:
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Redis storage
# --------------------------------------------------------------------------------------------------


def archive_key(config: HiveConfig, sha256: str) -> str:
    """Where the archive with this sha256 is stored (its reference count is the same key + ``:refs``)."""
    return f"{config.key_prefix}:security_scan:archive:{sha256}"


async def store(redis: Redis, config: HiveConfig, sha256: str, data: bytes, ttl: float) -> str:
    """Store an archive (or take one more reference on it) for ``ttl`` seconds; returns its key."""
    key = archive_key(config, sha256)
    millis = max(int(ttl * 1000), 1)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, data, px=millis)
        pipe.incr(key + ":refs")
        pipe.pexpire(key + ":refs", millis)
        await pipe.execute()
    return key


async def release(redis: Redis, key: str) -> None:
    """Drop one reference on a stored archive; the last one deletes it (safe against concurrent scans)."""
    refs = key + ":refs"
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(refs)
                left = int(await pipe.get(refs) or 0) - 1
                pipe.multi()
                if left > 0:
                    pipe.set(refs, left, keepttl=True)
                else:
                    pipe.delete(key, refs)
                await pipe.execute()
                return
            except WatchError:
                continue


async def fetch(redis: Redis, config: HiveConfig, sha256: str) -> bytes:
    """The archive stored under ``sha256``, checked against that hash."""
    data = await redis.get(archive_key(config, sha256))
    if data is None:
        raise LookupError(
            f"shard archive {sha256[:12]} is not in Redis (expired, or the scan that stored it has ended)"
        )
    if sha256_bytes(data) != sha256:
        raise UnsafeArchive(f"shard archive {sha256[:12]} does not match its sha256")
    return bytes(data)

