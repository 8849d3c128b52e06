"""What to scan: walk a folder as git would see it, then split the files into shards balanced by size.

Left out: whatever ``.gitignore`` files ignore (the folder's own, those below it, and those above it up to
the repository's top), version-control folders, virtualenvs (any folder holding ``pyvenv.cfg``), caches,
``node_modules`` and vendored folders, plus the ``exclude`` patterns of the settings and the command line.
Binary files, symbolic links and files over the size limit are not scanned and are reported as skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import attrs
from pathspec import GitIgnoreSpec

from .findings import Skipped
from .settings import ScanSettings

#: Always left out (gitignore syntax, relative to the scanned folder). ``exclude`` patterns add to these.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", ".bzr/",
    ".venv/", "venv/", ".tox/", ".nox/", "__pypackages__/", "site-packages/", "node_modules/",
    "__pycache__/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/", ".hypothesis/", ".eggs/", "*.egg-info/",
    "vendor/", "vendored/", "_vendor/", "third_party/",
)

#: Suffixes of files that are binary for certain (other files are sniffed for a NUL byte).
BINARY_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd", ".pdf",
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".whl", ".egg", ".jar", ".war",
    ".class", ".so", ".dll", ".dylib", ".exe", ".o", ".a", ".lib", ".pyc", ".pyo", ".pyd",
    ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".avi", ".mov", ".mkv", ".wav", ".ogg", ".flac",
    ".sqlite", ".sqlite3", ".db", ".parquet", ".npy", ".npz", ".pkl", ".pickle", ".h5", ".onnx", ".pt", ".bin",
})
SNIFF_BYTES = 8192

#: tar stores each file as a 512-byte header plus its data padded to 512 bytes; long or non-ASCII names
#: take an extra PAX header. The archive ends with two empty blocks, padded to a 10 KiB record, then gzip.
TAR_BLOCK = 512
ARCHIVE_OVERHEAD = 4 * 10240


@attrs.frozen
class FileEntry:
    """One file to scan: its path relative to the scanned folder (``/`` separators) and its size."""

    path: str
    size: int

    @property
    def archived_bytes(self) -> int:
        """Room the file takes in an uncompressed tar archive."""
        header = TAR_BLOCK if self.path.isascii() and len(self.path) <= 100 else 4 * TAR_BLOCK
        return header + math.ceil(self.size / TAR_BLOCK) * TAR_BLOCK


@attrs.define
class Inventory:
    """The files of one scan, what was skipped, and how many entries ignore rules left out."""

    root: Path
    files: list[FileEntry]
    skipped: list[Skipped]
    ignored: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def shard_budget(settings: ScanSettings) -> int:
    """Bytes of tar entries one shard may hold so that its archive stays under ``max_shard_bytes``."""
    return max(settings.max_shard_bytes - ARCHIVE_OVERHEAD, 4 * TAR_BLOCK)


def largest_file(settings: ScanSettings) -> int:
    """Files above this size are skipped: ``max_file_bytes``, or less when a shard could not hold them."""
    return min(settings.max_file_bytes, shard_budget(settings) - 4 * TAR_BLOCK)


# --------------------------------------------------------------------------------------------------
# walking
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class _Spec:
    """One ``.gitignore``: ``strip`` is removed from and ``add`` put before a root-relative path to match it."""

    strip: str
    add: str
    spec: GitIgnoreSpec

    def check(self, path: str) -> bool | None:
        if not path.startswith(self.strip):
            return None
        include: bool | None = self.spec.check_file(self.add + path[len(self.strip) :]).include
        return include


def _read_gitignore(folder: Path) -> GitIgnoreSpec | None:
    try:
        text = (folder / ".gitignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return GitIgnoreSpec.from_lines(text.splitlines())


def _ancestor_specs(root: Path) -> list[_Spec]:
    """The ``.gitignore`` files above ``root`` up to its repository's top (none when not in a repository)."""
    chain: list[Path] = []
    for folder in root.parents:
        chain.append(folder)
        if (folder / ".git").exists():
            break
    else:
        return []
    specs = []
    for folder in reversed(chain):  # outermost first: deeper files win, as in git
        spec = _read_gitignore(folder)
        if spec is not None:
            specs.append(_Spec(strip="", add=root.relative_to(folder).as_posix() + "/", spec=spec))
    return specs


def _is_binary(path: Path) -> bool:
    if path.suffix.lower() in BINARY_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return b"\0" in handle.read(SNIFF_BYTES)


def collect(target: Path, settings: ScanSettings, exclude: Sequence[str] = ()) -> Inventory:
    """The files under ``target`` to scan (or ``target`` alone, relative to its folder, when it is a file)."""
    target = target.resolve()
    root = target if target.is_dir() else target.parent
    defaults = GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES, *settings.exclude, *exclude])
    inventory = Inventory(root=root, files=[], skipped=[])
    limit = largest_file(settings)

    def ignored(rel: str, specs: list[_Spec]) -> bool:
        if defaults.match_file(rel):
            return True
        decision: bool | None = None
        for spec in specs:
            include = spec.check(rel)
            if include is not None:
                decision = include
        return bool(decision)

    def add_file(path: Path, rel: str) -> None:
        try:
            size = path.stat().st_size
            if size > limit:
                inventory.skipped.append(Skipped(path=rel, reason=f"larger than {limit} bytes ({size} bytes)"))
            elif _is_binary(path):
                inventory.skipped.append(Skipped(path=rel, reason="binary file"))
            else:
                inventory.files.append(FileEntry(rel, size))
        except OSError as exc:
            inventory.skipped.append(Skipped(path=rel, reason=f"unreadable: {exc.strerror or exc}"))

    def walk(folder: Path, prefix: str, specs: list[_Spec]) -> None:
        own = _read_gitignore(folder)
        if own is not None:
            specs = [*specs, _Spec(strip=prefix, add="", spec=own)]
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            inventory.skipped.append(Skipped(path=prefix or ".", reason=f"unreadable: {exc.strerror or exc}"))
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                if not ignored(rel, specs):
                    inventory.skipped.append(Skipped(path=rel, reason="symbolic link (not followed)"))
                continue
            if entry.is_dir():
                if ignored(rel + "/", specs) or (Path(entry.path) / "pyvenv.cfg").is_file():
                    inventory.ignored += 1
                else:
                    walk(Path(entry.path), rel + "/", specs)
            elif entry.is_file():
                if ignored(rel, specs):
                    inventory.ignored += 1
                else:
                    add_file(Path(entry.path), rel)

    if target.is_dir():
        walk(root, "", _ancestor_specs(root))
    else:
        add_file(target, target.name)
    return inventory


# --------------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------------


def plan_shards(files: Iterable[FileEntry], shards: int, settings: ScanSettings) -> list[list[FileEntry]]:
    """Split ``files`` into about ``shards`` groups of similar total size (more when the limits demand it).

    Largest file first into the lightest group that still has room (``max_shard_bytes`` counted as tar
    entries, ``max_shard_files``); a new group opens when none has. Deterministic: the same files give
    the same shards. Files in a shard and the shards themselves are sorted by path.
    """
    entries = sorted(files, key=lambda f: (-f.archived_bytes, f.path))
    if not entries:
        return []
    budget = shard_budget(settings)
    if entries[0].archived_bytes > budget:
        raise ValueError(f"{entries[0].path} ({entries[0].size} bytes) cannot fit in a shard of {budget} bytes")
    needed = max(
        math.ceil(sum(f.archived_bytes for f in entries) / budget), math.ceil(len(entries) / settings.max_shard_files)
    )
    count = min(len(entries), max(shards, needed, 1))
    bins: list[list[FileEntry]] = [[] for _ in range(count)]
    sizes = [0] * count
    for entry in entries:
        room = [
            i for i in range(len(bins))
            if sizes[i] + entry.archived_bytes <= budget and len(bins[i]) < settings.max_shard_files
        ]
        if room:
            chosen = min(room, key=lambda i: (sizes[i], len(bins[i]), i))
        else:
            bins.append([])
            sizes.append(0)
            chosen = len(bins) - 1
        bins[chosen].append(entry)
        sizes[chosen] += entry.archived_bytes
    shards_out = [sorted(b, key=lambda f: f.path) for b in bins if b]
    return sorted(shards_out, key=lambda b: b[0].path)


def shard_label(paths: Sequence[str]) -> str:
    """A short name for a shard: the folder its files share, and how many there are."""
    folders = [str(PurePosixPath(p).parent) for p in paths]
    common = os.path.commonpath(folders) if folders else "."
    where = "./" if common in ("", ".") else common + "/"
    return f"{where} ({len(paths)} file{'s' if len(paths) != 1 else ''})"
