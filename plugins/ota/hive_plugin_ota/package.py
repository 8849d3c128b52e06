"""Update packages: building the zip (nexus side) and reading one safely (spore side).

A package is a zip with three kinds of member and nothing else::

    manifest.json        the manifest (see :mod:`.manifest`), exactly the bytes that were signed
    manifest.sig         its Ed25519 signature (JSON)
    app/<path>           each file the manifest lists, which unpacks into the release's app/ folder

:class:`PackageReader` checks every member before anything is written: no absolute path, no ``..``, no
link or device, no unexpected name, no encrypted member, caps on member count, total size and compression
ratio; then the set of files must be exactly the manifest's, and each file is streamed out with its size
capped and its SHA-256 compared, into a folder the caller owns (a new release directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ManifestError, OTAError, PackageRejected
from .manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest, check_path, check_requirement
from .signing import MANIFEST_DOMAIN, MAX_SIGNATURE_TEXT, sign

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
APP_PREFIX = "app/"
#: Never packaged: caches, VCS folders, virtual environments, build output.
EXCLUDED_DIRS = frozenset({
    "__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
    ".tox", ".nox", ".venv", "venv", "build", "dist",
})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
#: Members under this size are exempt from the compression-ratio check (tiny files compress absurdly well).
RATIO_EXEMPT_BYTES = 64 * 1024
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@attrs.frozen(kw_only=True)
class Limits:
    """Caps on what a package may unpack to (from :class:`~hive_plugin_ota.settings.OTASettings`)."""

    max_members: int = 5000
    max_total_bytes: int = 256 * 1024 * 1024
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_members=settings.max_members, max_total_bytes=settings.max_total_bytes, max_ratio=settings.max_ratio
        )


@attrs.frozen(kw_only=True)
class UpdatePackage:
    """A built package on disk: what :meth:`OTAManager.create_package` returns and ``broadcast_update`` sends."""

    path: Path
    checksum: str
    size: int
    manifest: Manifest
    signature: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest.version_text

    @property
    def description(self) -> str:
        return self.manifest.description

    @classmethod
    def from_file(cls, path: str | Path) -> UpdatePackage:
        """Read a package zip's manifest and signature (checked for form, not trust: the spores check that)."""
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as archive:
                raw = _read_small(archive, MANIFEST_NAME, MAX_MANIFEST_BYTES)
                signature = json.loads(_read_small(archive, SIGNATURE_NAME, MAX_SIGNATURE_TEXT))
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise OTAError(f"{path} is not a hive OTA package: {exc}") from None
        return cls(
            path=path, checksum=sha256_file(path), size=path.stat().st_size,
            manifest=Manifest.parse(raw), signature=signature,
        )

    def ticket(self, package_url: str) -> dict[str, Any]:
        """The ``UPDATE_SYSTEM`` data: where to fetch the package, its checksum, and the signed manifest."""
        return {
            "package_url": package_url,
            "checksum": self.checksum,
            "size": self.size,
            "version": self.version,
            "manifest": self.manifest.raw.decode("utf-8"),
            "signature": self.signature,
        }

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "checksum": self.checksum, "package_size": self.size,
                **self.manifest.summary()}


# --- building ---------------------------------------------------------------------------------------------


def collect_sources(source_paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """``(path in the release, file on disk)`` for every file under the sources, caches and VCS folders left out.

    A folder ``src/mypkg`` contributes ``mypkg/...``; a file contributes its own name.
    """
    found: dict[str, Path] = {}
    for source in source_paths:
        source = Path(source)
        if source.is_symlink() or not source.exists():
            raise OTAError(f"source {source} does not exist (or is a symbolic link)")
        if source.is_file():
            entries = [(source.name, source)]
        else:
            entries = []
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if any(part in EXCLUDED_DIRS or part.endswith(".egg-info") for part in relative.parts):
                    continue
                if path.is_symlink():
                    raise OTAError(f"{path} is a symbolic link; packages hold regular files only")
                if path.is_dir() or path.suffix in EXCLUDED_SUFFIXES:
                    continue
                if not path.is_file():
                    raise OTAError(f"{path} is not a regular file")
                entries.append((f"{source.name}/{relative.as_posix()}", path))
        for arcname, path in entries:
            try:
                check_path(arcname)
            except ManifestError as exc:
                raise OTAError(f"cannot package {path}: {exc}") from None
            if arcname.casefold() in {a.casefold() for a in found}:
                raise OTAError(f"two sources provide {arcname!r}")
            found[arcname] = path
    if not found:
        raise OTAError("the sources hold no files to package")
    return sorted(found.items())


def default_apps(source_paths: Iterable[str | Path]) -> list[str]:
    """The modules a release offers by default: each source that is a package folder or a ``.py`` file."""
    apps = []
    for source in map(Path, source_paths):
        if source.is_dir() and (source / "__init__.py").is_file():
            apps.append(source.name)
        elif source.is_file() and source.suffix == ".py":
            apps.append(source.stem)
    return apps


def read_requirements(source_paths: Iterable[str | Path]) -> list[str]:
    """PEP 508 lines of each source's ``requirements.txt`` (a source may be that file itself)."""
    requirements: list[str] = []
    for source in map(Path, source_paths):
        path = source if source.name == "requirements.txt" else source / "requirements.txt"
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            text = line.split(" #", 1)[0].strip()
            if not text or text.startswith("#"):
                continue
            try:
                requirement = check_requirement(text)
            except ManifestError as exc:
                raise OTAError(f"{path}:{number}: {exc}") from None
            if requirement not in requirements:
                requirements.append(requirement)
    return requirements


def build_package(
    key: Ed25519PrivateKey,
    *,
    version: str,
    description: str,
    source_paths: Sequence[str | Path],
    out_dir: Path,
    include_dependencies: bool = True,
    requirements: Sequence[str] | None = None,
    apps: Sequence[str] | None = None,
    ttl: float = 30 * 86400.0,
) -> UpdatePackage:
    """Zip the sources with a signed manifest into ``out_dir/hive-ota-VERSION.zip``."""
    sources = collect_sources(source_paths)
    if requirements is None:
        requirements = read_requirements(source_paths) if include_dependencies else []
    elif not include_dependencies:
        requirements = []
    now = datetime.now(UTC)
    files = [FileEntry(path=arc, sha256=sha256_file(path), size=path.stat().st_size) for arc, path in sources]
    manifest = Manifest.create(
        version=version,
        description=description,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
        apps=default_apps(source_paths) if apps is None else apps,
        requirements=requirements,
        files=files,
    )
    signature = sign(key, MANIFEST_DOMAIN, manifest.raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"hive-ota-{manifest.version_text}.zip"
    if target.exists():
        raise OTAError(f"{target} already exists: versions only go up, build a new one (or delete it first)")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _write(archive, MANIFEST_NAME, manifest.raw)
            _write(archive, SIGNATURE_NAME, json.dumps(signature, sort_keys=True).encode())
            for arcname, path in sources:
                _write(archive, APP_PREFIX + arcname, path.read_bytes())
        # the file on disk must be what the manifest says it was when hashed
        for (arcname, path), entry in zip(sources, files, strict=True):
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                raise OTAError(f"{path} changed while it was being packaged ({arcname}); build again")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return UpdatePackage.from_file(target)


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data)


def _read_small(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ValueError(f"{name} is {info.file_size} bytes, over {limit}")
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is over {limit} bytes")
    return data


# --- reading (untrusted) --------------------------------------------------------------------------------------


class PackageReader:
    """An untrusted package zip, every member checked on open. Use as a context manager."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        try:
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise PackageRejected(f"the package is not a valid zip file: {exc}") from None
        try:
            self.members = self._check_members()
            self.manifest_bytes = self._small(MANIFEST_NAME, MAX_MANIFEST_BYTES)
            self.signature_text = self._small(SIGNATURE_NAME, MAX_SIGNATURE_TEXT).decode("utf-8", "replace")
        except BaseException:
            self.archive.close()
            raise

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.archive.close()

    def _check_members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self.archive.infolist()
        if len(infos) > self.limits.max_members + 2:
            raise PackageRejected(
                f"the package has {len(infos)} members, over the limit of {self.limits.max_members} (max_members)"
            )
        members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.orig_filename
            shown = repr(name[:200])
            if info.filename != name or "\x00" in name:
                raise PackageRejected(f"member {shown} has a NUL byte in its name")
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
                raise PackageRejected(
                    f"member {shown} has an absolute or Windows path: it would land outside the release directory"
                )
            if ".." in name.split("/"):
                raise PackageRejected(f"member {shown} contains '..': it would land outside the release directory")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PackageRejected(f"member {shown} is a symbolic link; packages may hold regular files only")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
                raise PackageRejected(f"member {shown} is not a regular file (mode {oct(mode)})")
            if info.flag_bits & 0x1:
                raise PackageRejected(f"member {shown} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PackageRejected(f"member {shown} uses an unsupported compression method {info.compress_type}")
            if name.endswith("/"):
                folder = name.rstrip("/")
                if folder != "app" and not folder.startswith(APP_PREFIX):
                    raise PackageRejected(f"unexpected folder {shown} in the package (only app/ is allowed)")
                if folder != "app":
                    self._path(folder[len(APP_PREFIX):], shown)
                continue
            if name not in (MANIFEST_NAME, SIGNATURE_NAME):
                if not name.startswith(APP_PREFIX):
                    raise PackageRejected(f"unexpected member {shown} (only manifest.json, manifest.sig and app/...)")
                self._path(name[len(APP_PREFIX):], shown)
            if name in members:
                raise PackageRejected(f"member {shown} appears twice")
            if info.file_size > max(RATIO_EXEMPT_BYTES, info.compress_size * self.limits.max_ratio):
                raise PackageRejected(
                    f"member {shown} expands {info.file_size} bytes from {info.compress_size}: over the "
                    f"compression ratio limit of {self.limits.max_ratio:g} (max_ratio)"
                )
            total += info.file_size
            if total > self.limits.max_total_bytes:
                raise PackageRejected(
                    f"the package unpacks to more than {self.limits.max_total_bytes} bytes (max_total_bytes)"
                )
            members[name] = info
        for required in (MANIFEST_NAME, SIGNATURE_NAME):
            if required not in members:
                unsigned = " (it is unsigned)" if required == SIGNATURE_NAME else ""
                raise PackageRejected(f"the package has no {required}{unsigned}")
        return members

    @staticmethod
    def _path(relative: str, shown: str) -> None:
        try:
            check_path(relative)
        except ManifestError as exc:
            raise PackageRejected(f"member {shown}: {exc}") from None

    def _small(self, name: str, limit: int) -> bytes:
        info = self.members[name]
        if info.file_size > limit:
            raise PackageRejected(f"{name} is {info.file_size} bytes, over the limit of {limit}")
        try:
            with self.archive.open(info) as handle:
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise PackageRejected(f"{name} is corrupt: {exc}") from None
        if len(data) > limit:
            raise PackageRejected(f"{name} is over the limit of {limit} bytes")
        return data

    def extract(self, manifest: Manifest, dest: Path) -> None:
        """Write the manifest's files into ``dest/app``, each size-capped and hash-checked; the folder must be new.

        The caller removes ``dest`` when this raises.
        """
        if self.manifest_bytes != manifest.raw:
            raise PackageRejected("the package's manifest.json differs from the signed manifest it was announced with")
        listed = {APP_PREFIX + f.path for f in manifest.files}
        present = {name for name in self.members if name.startswith(APP_PREFIX)}
        if present - listed:
            raise PackageRejected(f"the package holds files its manifest does not list: {sorted(present - listed)[:5]}")
        if listed - present:
            raise PackageRejected(f"the package lacks files its manifest lists: {sorted(listed - present)[:5]}")
        root = dest.resolve()
        app = root / "app"
        app.mkdir(parents=True, exist_ok=False)
        for entry in manifest.files:
            info = self.members[APP_PREFIX + entry.path]
            if info.file_size != entry.size:
                raise PackageRejected(
                    f"file {entry.path!r} is {info.file_size} bytes in the zip but {entry.size} in the manifest"
                )
            target = app.joinpath(*entry.path.split("/"))
            parent = target.parent
            if not parent.resolve().is_relative_to(app) or not target.resolve().is_relative_to(app):
                raise PackageRejected(f"file {entry.path!r} would land outside the release directory")
            parent.mkdir(parents=True, exist_ok=True)
            if parent.resolve() != parent or parent.is_symlink():
                raise PackageRejected(f"file {entry.path!r}: its folder resolves outside the release directory")
            self._extract_one(info, entry, target)

    def _extract_one(self, info: zipfile.ZipInfo, entry: FileEntry, target: Path) -> None:
        digest = hashlib.sha256()
        written = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        try:
            with os.fdopen(fd, "wb") as out, self.archive.open(info) as source:
                while True:
                    block = source.read(min(_CHUNK, entry.size - written + 1))
                    if not block:
                        break
                    written += len(block)
                    if written > entry.size:
                        raise PackageRejected(f"file {entry.path!r} is longer than the {entry.size} bytes declared")
                    digest.update(block)
                    out.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise PackageRejected(f"file {entry.path!r} is corrupt in the package: {exc}") from None
        if written != entry.size:
            raise PackageRejected(f"file {entry.path!r} has {written} bytes, not the {entry.size} declared")
        if digest.hexdigest() != entry.sha256:
            raise PackageRejected(f"file {entry.path!r} does not match its SHA-256 in the signed manifest")
