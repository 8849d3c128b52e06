"""Shard archives: reproducible, unpacked only as their manifest says, stored and released safely in Redis."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hive_framework import HiveConfig

from hive_plugin_security_scan.archive import (
    ManifestEntry,
    UnsafeArchive,
    archive_key,
    check_member_path,
    fetch,
    pack,
    release,
    sha256_bytes,
    store,
    unpack,
    verify_local,
)
from hive_plugin_security_scan.inventory import collect
from hive_plugin_security_scan.job import pack_shards
from hive_plugin_security_scan.settings import ScanSettings


def _tree(root: Path) -> list[str]:
    files = {"a.py": "x = 1\n", "pkg/b.txt": "hello\n", "pkg/deep/c.toml": "[x]\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return sorted(files)


def test_pack_is_reproducible_and_round_trips(tmp_path: Path) -> None:
    # Given a small tree
    src = tmp_path / "src"
    paths = _tree(src)
    # When it is packed twice (with a change of mtime in between)
    first, skipped = pack(src, paths)
    (src / "a.py").touch()
    second, _ = pack(src, paths)
    # Then the archives are byte-identical, so their sha256 addresses them
    assert skipped == []
    assert first.data == second.data and first.sha256 == sha256_bytes(first.data)
    assert [e.path for e in first.manifest] == paths
    # And unpacking gives back exactly the files
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack(first.data, first.manifest, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == paths
    assert (dest / "pkg/b.txt").read_text() == "hello\n"


def test_pack_skips_files_that_vanished(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    (tmp_path / "a.py").unlink()
    packed, skipped = pack(tmp_path, paths)
    assert [e.path for e in packed.manifest] == ["pkg/b.txt", "pkg/deep/c.toml"]
    assert [s.path for s in skipped] == ["a.py"]


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "", "a\\b", "C:x", "a/."])
def test_unsafe_member_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafeArchive):
        check_member_path(path)


def _archive(add: Callable[[tarfile.TarFile], None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        add(tar)
    return raw.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _special(name: str, kind: bytes, target: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return add


GOOD = b"print('hi')\n"
ENTRY = ManifestEntry("ok.py", sha256_bytes(GOOD), len(GOOD))


@pytest.mark.parametrize(
    ("add", "manifest", "reason"),
    [
        (lambda t: _file(t, "/tmp/evil.py", GOOD), [ENTRY], "unsafe path"),
        (lambda t: _file(t, "../evil.py", GOOD), [ENTRY], "unsafe path"),
        (_special("ok.py", tarfile.SYMTYPE, "/etc/passwd"), [ENTRY], "link"),
        (_special("ok.py", tarfile.LNKTYPE, "/etc/passwd"), [ENTRY], "link"),
        (_special("ok.py", tarfile.CHRTYPE), [ENTRY], "non-regular"),
        (_special("ok.py", tarfile.DIRTYPE), [ENTRY], "non-regular"),
        (lambda t: (_file(t, "ok.py", GOOD), _file(t, "extra.py", GOOD)), [ENTRY], "not in the manifest"),
        (lambda t: (_file(t, "ok.py", GOOD), _file(t, "ok.py", GOOD)), [ENTRY], "not in the manifest"),
        (lambda t: _file(t, "ok.py", GOOD + b"#"), [ENTRY], "bytes, the manifest says"),
        (lambda t: _file(t, "ok.py", GOOD.upper()), [ENTRY], "sha256 does not match"),
        (lambda t: _file(t, "ok.py", GOOD), [ENTRY, ManifestEntry("b.py", "0" * 64, 1)], "lacks 1 file"),
        (lambda t: _file(t, "ok.py", GOOD), [ENTRY, ENTRY], "twice"),
    ],
)
def test_unpack_refuses_anything_but_the_manifest(tmp_path: Path, add: Callable[[tarfile.TarFile], None],
                                                  manifest: list[ManifestEntry], reason: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match=reason):
        unpack(_archive(add), manifest, dest)
    # nothing was written outside the destination
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="cannot be unpacked"):
        unpack(b"not a tar.gz", [ENTRY], tmp_path)


def test_verify_local_needs_same_bytes_and_no_links(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    packed, _ = pack(tmp_path, paths)
    assert verify_local(tmp_path, packed.manifest)
    (tmp_path / "pkg/b.txt").write_text("hellO\n")  # same size, other bytes
    assert not verify_local(tmp_path, packed.manifest)
    (tmp_path / "pkg/b.txt").unlink()
    (tmp_path / "pkg/b.txt").symlink_to(tmp_path / "a.py")
    assert not verify_local(tmp_path, packed.manifest)


@pytest.mark.redis
async def test_store_fetch_and_reference_counted_release(hive_config: HiveConfig, tmp_path: Path) -> None:
    # Given one archive stored twice (two scans of the same content)
    packed, _ = pack(tmp_path, _tree(tmp_path))
    client = aioredis.Redis.from_url(hive_config.effective_redis_url())
    try:
        key = await store(client, hive_config, packed.sha256, packed.data, ttl=60)
        assert key == archive_key(hive_config, packed.sha256)
        assert await store(client, hive_config, packed.sha256, packed.data, ttl=60) == key
        assert 0 < await client.pttl(key) <= 60_000
        assert await fetch(client, hive_config, packed.sha256) == packed.data
        # When the first scan releases it, the second can still fetch it
        await release(client, key)
        assert await fetch(client, hive_config, packed.sha256) == packed.data
        # And the last release deletes the archive and its count
        await release(client, key)
        assert await client.exists(key, key + ":refs") == 0
        with pytest.raises(LookupError, match="not in Redis"):
            await fetch(client, hive_config, packed.sha256)
        # A tampered archive is refused
        await client.set(key, b"tampered")
        with pytest.raises(UnsafeArchive, match="does not match"):
            await fetch(client, hive_config, packed.sha256)
        await client.delete(key)
    finally:
        await client.aclose()


def test_files_that_grew_after_listing_still_make_shards_spores_accept(tmp_path: Path) -> None:
    # Given a listing of four small files, two of which then grow (one past the shard limit)
    settings = ScanSettings(max_shard_bytes=64 * 1024)
    for index in range(4):
        (tmp_path / f"f{index}.txt").write_text("x" * 5000)
    inventory = collect(tmp_path, settings)
    (tmp_path / "f0.txt").write_text("y" * 30_000)
    (tmp_path / "f1.txt").write_text("z" * 70_000)
    # When the listing is packed as one shard
    packed, skipped = pack_shards(inventory, 1, settings)
    # Then it was split until every shard is within the limits spores check, and the too-big file was skipped
    for shard, data in packed:
        shard.check_limits(settings)
        assert len(data) <= settings.max_shard_bytes
    assert sorted(p for shard, _ in packed for p in shard.paths) == ["f0.txt", "f2.txt", "f3.txt"]
    assert [(s.path, s.reason) for s in skipped] == [("f1.txt", "does not fit in a shard (max_shard_bytes)")]
