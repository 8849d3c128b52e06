"""A spore's OTA folder: release directories, the atomic ``current`` pointer and what the node has trusted.

::

    <root>/releases/<version>-<sha12>/app/            the release's code (put first on the spore's sys.path)
    <root>/releases/<version>-<sha12>/site-packages/  its requirements (pip install --target), never the running env
    <root>/releases/<version>-<sha12>/release.json    version, apps, checksum, when installed
    <root>/current  -> releases/...                   what the supervisor starts (a symlink swapped with os.replace)
    <root>/previous -> releases/...                   what ``hive ota rollback`` goes back to
    <root>/trust.json                                 highest version trusted, used command nonces
    <root>/pending.json                               a switch the spore asks its supervisor for
    <root>/probation.json                             a switch not yet committed (survives a supervisor crash)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import attrs
from packaging.version import InvalidVersion, Version

from .errors import OTAError, PackageRejected

RELEASE_FILE = "release.json"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file in the same folder, fsynced, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@attrs.frozen
class Release:
    """One installed release directory."""

    name: str
    path: Path
    version: str
    apps: tuple[str, ...] = ()
    checksum: str = ""

    @property
    def app_dir(self) -> Path:
        return self.path / "app"

    @property
    def site_dir(self) -> Path:
        return self.path / "site-packages"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "apps": list(self.apps), "path": str(self.path)}


class ReleaseStore:
    """The OTA folder of one spore (one supervisor at a time owns it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases_dir = root / "releases"
        self.trust_file = root / "trust.json"
        self.pending_file = root / "pending.json"
        self.probation_file = root / "probation.json"
        self.lock_file = root / "supervisor.lock"

    def ensure(self) -> None:
        self.releases_dir.mkdir(parents=True, exist_ok=True)

    # --- releases --------------------------------------------------------------------------------------

    def release(self, name: str) -> Release | None:
        """The release called ``name``, if it is a direct child of ``releases/`` holding a ``release.json``."""
        if not name or "/" in name or name.startswith(".") or name in ("..",):
            return None
        path = self.releases_dir / name
        info = read_json(path / RELEASE_FILE)
        if info is None or path.is_symlink() or not path.is_dir():
            return None
        apps = info.get("apps") or []
        return Release(name=name, path=path, version=str(info.get("version", "")),
                       apps=tuple(str(a) for a in apps), checksum=str(info.get("checksum", "")))

    def releases(self) -> list[Release]:
        if not self.releases_dir.is_dir():
            return []
        found = [self.release(p.name) for p in self.releases_dir.iterdir()]
        return sorted((r for r in found if r is not None), key=lambda r: _version_key(r.version))

    def pointer(self, which: str) -> Release | None:
        """The release ``current`` or ``previous`` points at (``None`` when unset or pointing somewhere odd)."""
        link = self.root / which
        try:
            target = os.readlink(link)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != "releases":
            return None
        return self.release(parts[1])

    def current(self) -> Release | None:
        return self.pointer("current")

    def previous(self) -> Release | None:
        return self.pointer("previous")

    def set_pointer(self, which: str, release: Release | None) -> None:
        """Point ``which`` at ``release`` atomically (a new symlink renamed over the old one), or remove it."""
        link = self.root / which
        if release is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return
        tmp = self.root / f".{which}.{uuid.uuid4().hex[:8]}"
        os.symlink(f"releases/{release.name}", tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.root)

    def new_incoming(self) -> Path:
        self.ensure()
        return Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.releases_dir))

    def finish_incoming(self, incoming: Path, name: str, info: dict[str, Any]) -> Release:
        """Seal an unpacked release: write its ``release.json`` and rename the folder into place."""
        write_json(incoming / RELEASE_FILE, info)
        target = self.releases_dir / name
        if target.exists():
            # The same package (same checksum) installed again, e.g. forced: replace the old copy unless it runs.
            running = {r.name for r in (self.current(), self.previous()) if r is not None}
            if name in running:
                shutil.rmtree(incoming, ignore_errors=True)
                existing = self.release(name)
                if existing is None:
                    raise OTAError(f"release folder {target} is damaged")
                return existing
            shutil.rmtree(target)
        os.rename(incoming, target)
        _fsync_dir(self.releases_dir)
        release = self.release(name)
        if release is None:
            raise OTAError(f"release folder {target} could not be read back")
        return release

    def discard_incoming(self) -> None:
        if self.releases_dir.is_dir():
            for path in self.releases_dir.glob(".incoming-*"):
                shutil.rmtree(path, ignore_errors=True)

    @property
    def failed_file(self) -> Path:
        return self.root / "failed.json"

    def mark_failed(self, name: str) -> None:
        """Remember a release that was rolled back (pruning deletes it before any good one)."""
        failed = set((read_json(self.failed_file) or {}).get("releases", []))
        failed.add(name)
        write_json(self.failed_file, {"releases": sorted(failed)})

    def failed(self) -> set[str]:
        return {str(n) for n in (read_json(self.failed_file) or {}).get("releases", [])}

    def prune(self, keep: int) -> list[str]:
        """Delete old release folders, keeping ``current``, ``previous`` and the newest ``keep`` in all; releases
        that were rolled back go first, so the last good ones stay (``rollback --to`` needs them)."""
        pinned = {r.name for r in (self.current(), self.previous()) if r is not None}
        failed = self.failed()
        newest_first = [r for r in reversed(self.releases()) if r.name not in pinned]
        others = [r for r in newest_first if r.name not in failed] + [r for r in newest_first if r.name in failed]
        removed = []
        for release in others[max(keep - len(pinned), 0):]:
            shutil.rmtree(release.path, ignore_errors=True)
            removed.append(release.name)
        return removed

    # --- trust -----------------------------------------------------------------------------------------

    def highest(self) -> Version | None:
        state = read_json(self.trust_file) or {}
        try:
            return Version(str(state["highest"])) if state.get("highest") else None
        except InvalidVersion:
            return None

    def record_highest(self, version: Version) -> None:
        state = read_json(self.trust_file) or {}
        current = self.highest()
        if current is None or version > current:
            state["highest"] = str(version)
            write_json(self.trust_file, state)

    def use_nonce(self, nonce: str, expires_at: float) -> None:
        """Mark a signed command's nonce used; :class:`PackageRejected` when it was used before (a replay)."""
        state = read_json(self.trust_file) or {}
        now = time.time()
        nonces = {k: v for k, v in (state.get("nonces") or {}).items() if isinstance(v, int | float) and v > now}
        if nonce in nonces:
            raise PackageRejected("this signed order was already carried out on this node (a replay); sign a new one")
        nonces[nonce] = expires_at
        state["nonces"] = nonces
        write_json(self.trust_file, state)

    # --- hand-over between the spore and its supervisor ------------------------------------------------

    def read_pending(self) -> dict[str, Any] | None:
        return read_json(self.pending_file)

    def write_pending(self, data: dict[str, Any]) -> None:
        write_json(self.pending_file, data)

    def clear_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_file.unlink()


def release_name(version: str, checksum: str) -> str:
    return f"{version}-{checksum[:12]}"


def _version_key(text: str) -> tuple[int, Any]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def constraints_text() -> str:
    """``name==version`` for every distribution of the running environment: a release's requirements may add
    packages but never install a different version of one the spore already runs on (it would shadow it)."""
    pins = {}
    for dist in distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and dist.version:
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(pins.values())) + "\n"


async def install_requirements(release_dir: Path, requirements: tuple[str, ...], *, pip_args: tuple[str, ...],
                               timeout: float) -> None:
    """``pip install --target <release>/site-packages`` (constrained to the running environment's versions)."""
    site = release_dir / "site-packages"
    site.mkdir(exist_ok=True)
    if not requirements:
        return
    (release_dir / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (release_dir / "constraints.txt").write_text(constraints_text(), encoding="utf-8")
    argv = [
        sys.executable, "-m", "pip", "install", "--target", str(site), "--no-input", "--disable-pip-version-check",
        "--no-warn-script-location", "--no-cache-dir", "-c", str(release_dir / "constraints.txt"),
        "-r", str(release_dir / "requirements.txt"), *pip_args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHONNOUSERSITE"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PackageRejected(f"installing the requirements took longer than {timeout:g}s (pip_timeout)") from None
    if proc.returncode != 0:
        lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-4:])
        raise PackageRejected(f"pip could not install the requirements {list(requirements)}: {tail}")
