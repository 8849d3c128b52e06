"""Building packages and reading untrusted ones: every unsafe member is refused before anything is written."""

from __future__ import annotations

import contextlib
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ota_helpers import flip_byte, link_member, make_package, rewrite_zip, version_app, write_app

from hive_plugin_ota.errors import OTAError, PackageRejected
from hive_plugin_ota.package import Limits, PackageReader, UpdatePackage, build_package, read_requirements


@pytest.fixture
def v1(keys: dict[str, Any], tmp_path: Path) -> UpdatePackage:
    return make_package(keys["trusted"], tmp_path, "1.0.0", version_app('"v1"'))


def extract(package: UpdatePackage, dest: Path, limits: Limits | None = None) -> None:
    with PackageReader(package.path, limits or Limits()) as reader:
        reader.extract(package.manifest, dest)


def test_a_built_package_holds_the_signed_manifest_and_only_source_files(keys: dict[str, Any], tmp_path: Path) -> None:
    # Given sources with a cache folder, a .pyc and a requirements file
    source = write_app(tmp_path / "src", version_app('"v1"'))
    (source / "data.txt").write_text("hello")
    (source / "requirements.txt").write_text("# pinned\ntinydep==1.0  # the one\n\n")
    # When it is packaged
    package = build_package(keys["trusted"], version="1.0", description="d", source_paths=[source],
                            out_dir=tmp_path / "out")
    # Then the zip has the manifest, its signature and the files, with no caches, and the requirements
    with zipfile.ZipFile(package.path) as archive:
        names = sorted(archive.namelist())
        assert json.loads(archive.read("manifest.sig")) == package.signature
    assert names == ["app/otaapp/__init__.py", "app/otaapp/data.txt", "app/otaapp/requirements.txt",
                     "manifest.json", "manifest.sig"]
    assert package.manifest.requirements == ("tinydep==1.0",)
    assert package.manifest.apps == ("otaapp",)
    assert {f.path: f.size for f in package.manifest.files}["otaapp/data.txt"] == 5
    # and building the same version again is refused
    with pytest.raises(OTAError, match="already exists"):
        build_package(keys["trusted"], version="1.0", description="d", source_paths=[source], out_dir=tmp_path / "out")


def test_requirements_files_may_hold_only_pep508_lines(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-e git+https://example/x\n")
    with pytest.raises(OTAError, match="pip option"):
        read_requirements([tmp_path])


def test_a_good_package_unpacks_exactly_its_files(v1: UpdatePackage, tmp_path: Path) -> None:
    dest = tmp_path / "release"
    extract(v1, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["app/otaapp/__init__.py"]
    assert stat.S_IMODE((dest / "app/otaapp/__init__.py").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("member", "data", "reason"),
    [
        (zipfile.ZipInfo("../evil.py"), b"x", "'..'"),
        (zipfile.ZipInfo("app/../../evil.py"), b"x", "'..'"),
        (zipfile.ZipInfo("/tmp/evil.py"), b"x", "absolute"),
        (zipfile.ZipInfo("app\\..\\evil.py"), b"x", "Windows"),
        (zipfile.ZipInfo("evil.py"), b"x", "unexpected member"),
        (zipfile.ZipInfo("app/otaapp/extra.py"), b"x", "does not list"),
        (zipfile.ZipInfo("app/otaapp/__init__.py"), b"x", "twice"),
    ],
)
def test_an_unsafe_or_unexpected_member_rejects_the_whole_package(
    v1: UpdatePackage, tmp_path: Path, member: zipfile.ZipInfo, data: bytes, reason: str
) -> None:
    with pytest.warns(UserWarning) if member.filename == "app/otaapp/__init__.py" else contextlib.nullcontext():
        bad = rewrite_zip(v1, tmp_path / "bad.zip", extra=[(member, data)])
    dest = tmp_path / "sandbox" / "release"
    with pytest.raises(PackageRejected, match=None) as caught:
        extract(bad, dest)
    assert reason in str(caught.value)
    assert not [p for p in tmp_path.rglob("evil*")]
    assert not dest.exists()


def test_links_and_devices_are_refused(v1: UpdatePackage, tmp_path: Path) -> None:
    bad = rewrite_zip(v1, tmp_path / "link.zip", extra=[link_member("app/otaapp/l.py", "/etc/passwd")])
    with pytest.raises(PackageRejected, match="symbolic link"):
        extract(bad, tmp_path / "r1")
    fifo = zipfile.ZipInfo("app/otaapp/f")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    bad = rewrite_zip(v1, tmp_path / "fifo.zip", extra=[(fifo, b"")])
    with pytest.raises(PackageRejected, match="not a regular file"):
        extract(bad, tmp_path / "r2")


def test_caps_on_members_size_and_ratio(keys: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "src" / "big"
    source.mkdir(parents=True)
    (source / "zeros.bin").write_bytes(bytes(2_000_000))
    for index in range(5):
        (source / f"m{index}.py").write_text("x = 1\n")
    package = build_package(keys["trusted"], version="1", description="", source_paths=[source], out_dir=tmp_path)
    with pytest.raises(PackageRejected, match="max_members"):
        extract(package, tmp_path / "r1", Limits(max_members=3))
    with pytest.raises(PackageRejected, match="max_total_bytes"):
        extract(package, tmp_path / "r2", Limits(max_total_bytes=1_000_000, max_ratio=5000))
    with pytest.raises(PackageRejected, match="compression ratio"):
        extract(package, tmp_path / "r3", Limits(max_ratio=50))
    extract(package, tmp_path / "r4", Limits(max_ratio=5000))


def test_content_that_does_not_match_the_manifest_is_refused(
    v1: UpdatePackage, keys: dict[str, Any], tmp_path: Path
) -> None:
    flipped = UpdatePackage.from_file(flip_byte(v1, tmp_path / "flip.zip", "app/otaapp/__init__.py"))
    with pytest.raises(PackageRejected, match=r"corrupt|SHA-256"):
        extract(flipped, tmp_path / "r1")
    other = make_package(keys["trusted"], tmp_path, "1.0.0", version_app('"other"'))
    with PackageReader(other.path, Limits()) as reader, pytest.raises(PackageRejected, match="differs"):
        reader.extract(v1.manifest, tmp_path / "r2")
    missing = rewrite_zip(v1, tmp_path / "missing.zip", drop=("app/otaapp/__init__.py",))
    with pytest.raises(PackageRejected, match="lacks"):
        extract(missing, tmp_path / "r3")
    unsigned = tmp_path / "unsigned.zip"
    with zipfile.ZipFile(v1.path) as src, zipfile.ZipFile(unsigned, "w") as out:
        for info in src.infolist():
            if info.filename != "manifest.sig":
                out.writestr(info, src.read(info))
    with pytest.raises(PackageRejected, match="unsigned"):
        PackageReader(unsigned, Limits())
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(PackageRejected, match="not a valid zip"):
        PackageReader(tmp_path / "junk.zip", Limits())
