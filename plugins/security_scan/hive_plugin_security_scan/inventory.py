"""What to scan: list a folder's files as git sees them, then split them into shards balanced by size.

In a git work tree the list is git's own (``git ls-files``): every tracked file, even one a ``.gitignore``
matches, plus the untracked files no ignore rule matches. Elsewhere the folder is walked and ``.gitignore``
files are applied as git would (the folder's own, those below it, and those above it up to a repository's
top). Then the default excludes (version-control folders, virtualenvs, caches, ``node_modules``, vendored
folders) and the ``exclude`` patterns of the settings and the command line leave more out; each such
exclusion is listed in the report, and a repository's own ``!`` rules in its ``.gitignore`` files win over
the defaults. Binary files (by content), symbolic links, unreadable files and folders, and files over the
size limit are not scanned and are reported as skipped.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
from pathspec import GitIgnoreSpec

from .findings import Skipped, _path_out
from .paths import display
from .settings import ScanSettings

#: Always left out (gitignore syntax, relative to the scanned folder). ``exclude`` patterns add to these.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", ".bzr/",
    ".venv/", "venv/", ".tox/", ".nox/", "__pypackages__/", "site-packages/", "node_modules/",
    "__pycache__/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/", ".hypothesis/", ".eggs/", "*.egg-info/",
    "vendor/", "vendored/", "_vendor/", "third_party/",
)

#: How much of a file is read to tell text from binary (git reads 8000 bytes for the same purpose).
SNIFF_BYTES = 8192
#: Control bytes that text files hold: tab, line feed, vertical tab, form feed, carriage return, backspace, escape.
TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r\x08\x1b")
#: A head that is not UTF-8 is binary when more than this share of its bytes are control codes (C0 other
#: than TEXT_CONTROLS, and DEL): about 11% in random or compressed data, about 0 in Latin-1 or cp1252 text.
CONTROL_SHARE = 0.05

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


@attrs.frozen
class Excluded:
    """A file or folder (``path`` ends with ``/``) left out by an exclude pattern, and which one."""

    path: str
    pattern: str
    #: "default" (DEFAULT_EXCLUDES), "setting" (``exclude`` in the settings) or "option" (``--exclude``).
    source: str

    def to_dict(self) -> dict[str, Any]:
        return _path_out(attrs.asdict(self))


@attrs.define
class Inventory:
    """The files of one scan, what was skipped, what excludes left out, and how many entries the
    repository's own ignore rules left out."""

    root: Path
    files: list[FileEntry]
    skipped: list[Skipped]
    ignored: int = 0
    excluded: list[Excluded] = attrs.field(factory=list)
    #: "git" when git listed the files (a git work tree), "walk" otherwise.
    mode: str = "walk"

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
# listing
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
        text = (folder / ".gitignore").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    return GitIgnoreSpec.from_lines(text.splitlines())


def _ancestor_specs(root: Path) -> list[_Spec]:
    """The ``.gitignore`` files above ``root`` up to its repository's top (none when not in a repository)."""
    chain: list[Path] = []
    for folder in root.parents:
        chain.append(folder)
        if os.path.lexists(folder / ".git"):
            break
    else:
        return []
    specs = []
    for folder in reversed(chain):  # outermost first: deeper files win, as in git
        spec = _read_gitignore(folder)
        if spec is not None:
            specs.append(_Spec(strip="", add=root.relative_to(folder).as_posix() + "/", spec=spec))
    return specs


def looks_binary(head: bytes) -> bool:
    """True when the first bytes of a file say it is not text: a NUL byte (as git decides), or bytes that
    are not UTF-8 and hold many control codes (so Latin-1 or cp1252 text still counts as text)."""
    if b"\0" in head:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut multi-byte tail is fine
        return False
    except UnicodeDecodeError:
        pass
    controls = sum(1 for byte in head if (byte < 0x20 and byte not in TEXT_CONTROLS) or byte == 0x7F)
    return controls > CONTROL_SHARE * len(head)


def is_binary_file(path: Path) -> bool:
    with path.open("rb") as handle:
        return looks_binary(handle.read(SNIFF_BYTES))


@attrs.frozen
class _Rules:
    """Exclude patterns in the order they apply: the defaults, then the repository's ``.gitignore`` files
    (handled by the caller), then the settings' ``exclude``, then ``--exclude``. The last match wins."""

    defaults: GitIgnoreSpec
    setting: GitIgnoreSpec
    option: GitIgnoreSpec
    default_lines: tuple[str, ...]
    setting_lines: tuple[str, ...]
    option_lines: tuple[str, ...]

    @classmethod
    def make(cls, defaults: Sequence[str], setting: Sequence[str], option: Sequence[str]) -> _Rules:
        return cls(GitIgnoreSpec.from_lines(defaults), GitIgnoreSpec.from_lines(setting),
                   GitIgnoreSpec.from_lines(option), tuple(defaults), tuple(setting), tuple(option))

    def decide(self, rel: str, repo: Callable[[str], bool | None]) -> tuple[bool | None, Excluded | None]:
        """(excluded?, why) for ``rel`` (a folder ends with ``/``); ``repo`` gives the repository's verdict
        (True ignore, False a ``!`` rule re-includes, None no rule). ``why`` is None when not excluded by us."""
        decision: bool | None = None
        why: Excluded | None = None
        result = self.defaults.check_file(rel)
        if result.include is not None:
            decision = result.include
            why = Excluded(rel, self.default_lines[result.index or 0], "default") if result.include else None
        verdict = repo(rel)
        if verdict is not None:
            decision, why = verdict, None
        for spec, lines, source in ((self.setting, self.setting_lines, "setting"),
                                    (self.option, self.option_lines, "option")):
            result = spec.check_file(rel)
            if result.include is not None:
                decision = result.include
                why = Excluded(rel, lines[result.index or 0], source) if result.include else None
        return decision, why


class _Collector:
    """Builds an :class:`Inventory`: the checks every listed file goes through, whoever listed it."""

    def __init__(self, root: Path, settings: ScanSettings, exclude: Sequence[str]) -> None:
        self.root = root
        self.inventory = Inventory(root=root, files=[], skipped=[])
        self.rules = _Rules.make(DEFAULT_EXCLUDES, settings.exclude, exclude)
        self.limit = largest_file(settings)

    def unreadable(self, rel: str, exc: OSError | str) -> None:
        why = exc if isinstance(exc, str) else (exc.strerror or str(exc))
        self.inventory.skipped.append(Skipped(path=rel, reason=f"unreadable: {why}", kind="unreadable"))

    def add_file(self, path: Path, rel: str) -> None:
        try:
            info = path.lstat()
            if os.path.islink(path):
                self.inventory.skipped.append(Skipped(path=rel, reason="symbolic link (not followed)", kind="symlink"))
            elif not path.is_file():
                return
            elif info.st_size > self.limit:
                self.inventory.skipped.append(Skipped(
                    path=rel, reason=f"larger than {self.limit} bytes ({info.st_size} bytes)", kind="too-large"))
            elif is_binary_file(path):
                self.inventory.skipped.append(Skipped(path=rel, reason="binary file", kind="binary"))
            else:
                self.inventory.files.append(FileEntry(rel, info.st_size))
        except OSError as exc:
            self.unreadable(rel, exc)

    # ----------------------------------------------------------------------------------------------
    # walking (not a git work tree)

    def walk(self, folder: Path, prefix: str, specs: list[_Spec]) -> None:
        own = _read_gitignore(folder)
        if own is not None:
            specs = [*specs, _Spec(strip=prefix, add="", spec=own)]

        def repo(rel: str) -> bool | None:
            decision: bool | None = None
            for spec in specs:
                include = spec.check(rel)
                if include is not None:
                    decision = include
            return decision

        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self.unreadable(prefix or ".", exc)
            return
        for entry in entries:
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                self.unreadable(rel, exc)
                continue
            if is_dir and os.path.isfile(os.path.join(entry.path, "pyvenv.cfg")):  # never raises
                self.inventory.excluded.append(Excluded(rel + "/", "(a folder holding pyvenv.cfg)", "default"))
                continue
            decision, why = self.rules.decide(rel + "/" if is_dir else rel, repo)
            if decision:
                if why is None:
                    self.inventory.ignored += 1
                else:
                    self.inventory.excluded.append(why)
            elif is_dir:
                self.walk(Path(entry.path), rel + "/", specs)
            else:
                self.add_file(Path(entry.path), rel)

    # ----------------------------------------------------------------------------------------------
    # git's list (a git work tree)

    def from_git(self, listing: GitListing) -> None:
        folder_specs: dict[str, list[_Spec]] = {"": [*_ancestor_specs(self.root)]}
        own = _read_gitignore(self.root)
        if own is not None:
            folder_specs[""].append(_Spec(strip="", add="", spec=own))

        def specs_for(folder: str) -> list[_Spec]:  # folder: "" or "a/b/"
            if folder not in folder_specs:
                parent = folder[: folder.rstrip("/").rfind("/") + 1]
                specs = specs_for(parent)
                own = _read_gitignore(self.root / folder)
                folder_specs[folder] = [*specs, _Spec(strip=folder, add="", spec=own)] if own else specs
            return folder_specs[folder]

        def negation(specs: list[_Spec]) -> Callable[[str], bool | None]:
            # git listed the file, so the repository wants it: only its "!" rules matter here (they win
            # over our defaults); its ignore rules never drop a tracked file.
            def repo(rel: str) -> bool | None:
                decision: bool | None = None
                for spec in specs:
                    include = spec.check(rel)
                    if include is not None:
                        decision = include
                return False if decision is False else None

            return repo

        folder_verdict: dict[str, Excluded | None] = {}

        def folder_excluded(folder: str) -> Excluded | None:  # folder: "a/b/"
            if folder not in folder_verdict:
                parent = folder[: folder.rstrip("/").rfind("/") + 1]
                above = folder_excluded(parent) if parent else None
                if above is not None:
                    folder_verdict[folder] = above
                elif os.path.isfile(self.root / folder / "pyvenv.cfg"):
                    folder_verdict[folder] = Excluded(folder, "(a folder holding pyvenv.cfg)", "default")
                else:
                    decision, why = self.rules.decide(folder, negation(specs_for(parent)))
                    folder_verdict[folder] = why if decision else None
            return folder_verdict[folder]

        reported: set[str] = set()
        for rel in listing.files:
            if rel.endswith("/"):  # a nested repository git does not descend into
                self.inventory.skipped.append(Skipped(path=rel, reason="nested git repository", kind="nested-repo"))
                continue
            folder = rel[: rel.rfind("/") + 1]
            why = folder_excluded(folder) if folder else None
            if why is None:
                decision, why = self.rules.decide(rel, negation(specs_for(folder)))
                if not decision:
                    why = None
                elif why is None:
                    continue
            if why is not None:
                if why.path not in reported:
                    reported.add(why.path)
                    self.inventory.excluded.append(why)
                continue
            path = self.root / rel
            if os.path.isdir(path) and not os.path.islink(path):
                self.inventory.skipped.append(Skipped(path=rel, reason="git submodule (not scanned)", kind="submodule"))
            elif os.path.lexists(path):
                self.add_file(path, rel)
            # else: tracked but deleted from the work tree; nothing to scan
        for rel, reason in listing.unreadable:
            self.unreadable(rel, reason)


@attrs.frozen
class GitListing:
    """What ``git ls-files`` says under a folder: its files (paths relative to it) and the folders it
    could not open."""

    files: list[str]
    unreadable: list[tuple[str, str]]


_COULD_NOT_OPEN = re.compile(r"could not open directory '(.*)': (.*)$")


def git_listing(root: Path) -> GitListing | None:
    """Tracked files plus untracked ones no ignore rule matches, when ``root`` is in a git work tree (else
    None, as when git is not installed)."""
    git = shutil.which("git")
    if git is None:
        return None
    env = {**os.environ, "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}

    def run(*args: str) -> subprocess.CompletedProcess[bytes] | None:
        try:
            return subprocess.run([git, *args], cwd=root, capture_output=True, env=env, check=False)
        except OSError:
            return None

    probe = run("rev-parse", "--is-inside-work-tree", "--show-prefix")
    if probe is None or probe.returncode != 0 or not probe.stdout.startswith(b"true\n"):
        return None
    prefix = os.fsdecode(probe.stdout.split(b"\n")[1])
    listed = run("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is None or listed.returncode != 0:
        return None
    files = sorted({os.fsdecode(name) for name in listed.stdout.split(b"\0") if name})
    unreadable = []
    for line in listed.stderr.splitlines():
        match = _COULD_NOT_OPEN.search(os.fsdecode(line))
        if match:
            folder = match.group(1)  # relative to the work tree's top
            if folder.startswith(prefix):
                unreadable.append((folder[len(prefix):] or ".", match.group(2)))
    return GitListing(files=files, unreadable=unreadable)


def collect(target: Path, settings: ScanSettings, exclude: Sequence[str] = (), *, use_git: bool = True) -> Inventory:
    """The files under ``target`` to scan (or ``target`` alone, relative to its folder, when it is a file)."""
    target = target.resolve()
    root = target if target.is_dir() else target.parent
    collector = _Collector(root, settings, exclude)
    if target.is_dir():
        listing = git_listing(root) if use_git else None
        if listing is not None:
            collector.inventory.mode = "git"
            collector.from_git(listing)
        else:
            collector.walk(root, "", _ancestor_specs(root))
    else:
        collector.add_file(target, target.name)
    inventory = collector.inventory
    inventory.skipped.sort(key=lambda s: (s.path, s.reason))
    inventory.excluded.sort(key=lambda e: e.path)
    return inventory


# --------------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------------


def plan_shards(files: Iterable[FileEntry], shards: int, settings: ScanSettings) -> list[list[FileEntry]]:
    """Split ``files`` into about ``shards`` groups of similar total size (more when the limits demand it).

    Largest file first into the lightest group that still has room (``max_shard_bytes`` counted as tar
    entries, ``max_shard_files``); a new group opens when none has. Deterministic: the same files give
    the same shards. Files in a shard are sorted by path, the shards heaviest first.
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
    # Heaviest first: spores claim tasks in the order they are queued, so the big shards start first and the
    # last to finish is a small one (longest-processing-time-first scheduling).
    return sorted(shards_out, key=lambda b: (-sum(f.archived_bytes for f in b), b[0].path))


def shard_label(paths: Sequence[str]) -> str:
    """A short name for a shard: the folder its files share, and how many there are."""
    folders = [str(PurePosixPath(display(p)).parent) for p in paths]
    common = os.path.commonpath(folders) if folders else "."
    where = "./" if common in ("", ".") else common + "/"
    return f"{where} ({len(paths)} file{'s' if len(paths) != 1 else ''})"
