"""The release manifest: what a package holds, read from untrusted bytes with every field checked.

A manifest is JSON::

    {"format": "hive-ota/1", "version": "2.0.0", "description": "...",
     "created_at": "2025-01-01T00:00:00+00:00", "expires_at": "2025-01-31T00:00:00+00:00",
     "apps": ["myapp.tasks"], "requirements": ["tinydep==1.0"],
     "files": [{"path": "myapp/tasks.py", "sha256": "<64 hex>", "size": 1234}, ...]}

``files`` are relative POSIX paths under the release's ``app/`` folder; ``apps`` are the modules a spore
loads from it (``--app``); ``requirements`` are PEP 508 names installed into the release's own
``site-packages``. :meth:`Manifest.parse` accepts nothing else: unknown keys, duplicate keys, unsafe or
colliding paths, a version that is not PEP 440, a requirement that is not plain PEP 508 all raise
:class:`~hive_plugin_ota.errors.ManifestError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from .errors import ManifestError

FORMAT = "hive-ota/1"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_FILES = 100_000
MAX_PATH = 512
MAX_DESCRIPTION = 10_000
MAX_APPS = 50
MAX_REQUIREMENTS = 200
MAX_FILE_SIZE = 2**40
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_KEYS = frozenset({"format", "version", "description", "created_at", "expires_at", "apps", "requirements", "files"})
_FILE_KEYS = frozenset({"path", "sha256", "size"})


def parse_version(text: Any, what: str = "version") -> Version:
    if not isinstance(text, str) or not text or len(text) > 100:
        raise ManifestError(f"{what} must be a PEP 440 version string, got {text!r}")
    try:
        return Version(text)
    except InvalidVersion:
        raise ManifestError(f"{what} {text!r} is not a PEP 440 version") from None


def check_path(path: Any) -> str:
    """``path`` if it is a safe relative POSIX path (no ``..``, no absolute, no drive, no control chars)."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"a file path must be a non-empty string, got {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise ManifestError(f"file path {path[:60]!r}... is longer than {MAX_PATH} bytes")
    if any(ord(c) < 32 or ord(c) == 127 or c in "\\:" for c in path):
        raise ManifestError(f"file path {path!r} contains a control character, '\\' or ':'")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        raise ManifestError(f"file path {path!r} is not valid UTF-8")
    if path.startswith("/"):
        raise ManifestError(f"file path {path!r} is absolute")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ManifestError(f"file path {path!r} has an empty, '.' or '..' component")
    return path


def check_module(name: Any) -> str:
    if not isinstance(name, str) or len(name) > 200 or not _MODULE.fullmatch(name):
        raise ManifestError(f"app {name!r} is not a dotted Python module name")
    return name


def check_requirement(text: Any) -> str:
    """A PEP 508 requirement by name (no pip options, no direct URL: indexes come from ``pip_args``)."""
    if not isinstance(text, str) or not text.strip() or len(text) > 500:
        raise ManifestError(f"requirement {text!r} must be a non-empty PEP 508 string")
    if text.lstrip().startswith("-"):
        raise ManifestError(f"requirement {text!r} is a pip option; only PEP 508 requirements are allowed")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ManifestError(f"requirement {text!r} is not PEP 508: {exc}") from None
    if requirement.url:
        raise ManifestError(
            f"requirement {text!r} is a direct URL reference; name a package (set pip_args for indexes)"
        )
    return str(requirement)


def _timestamp(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise ManifestError(f"{what} must be an ISO 8601 time string, got {value!r}")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError(f"{what} {value!r} is not an ISO 8601 time") from None
    if stamp.tzinfo is None or stamp.utcoffset() is None:
        raise ManifestError(f"{what} {value!r} has no time zone")
    return stamp


@attrs.frozen
class FileEntry:
    path: str
    sha256: str
    size: int


@attrs.frozen(kw_only=True)
class Manifest:
    """A parsed, checked manifest. ``raw`` keeps the exact bytes the signature covers."""

    version: Version
    description: str
    created_at: datetime
    expires_at: datetime
    apps: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    raw: bytes = b""

    @classmethod
    def create(
        cls,
        *,
        version: str,
        description: str,
        created_at: datetime,
        expires_at: datetime,
        apps: Iterable[str] = (),
        requirements: Iterable[str] = (),
        files: Iterable[FileEntry] = (),
    ) -> Manifest:
        """A new manifest, serialised and then parsed back, so a built one passes the same checks as a received one."""
        body = {
            "format": FORMAT,
            "version": version,
            "description": description,
            "created_at": created_at.astimezone(UTC).isoformat(),
            "expires_at": expires_at.astimezone(UTC).isoformat(),
            "apps": list(apps),
            "requirements": list(requirements),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
        }
        return cls.parse(json.dumps(body, sort_keys=True, indent=1).encode())

    @classmethod
    def parse(cls, data: bytes | str) -> Manifest:
        """Read a manifest from untrusted bytes; :class:`ManifestError` names the first problem."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"the manifest is {len(raw)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
        try:
            body = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except ManifestError:
            raise
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ManifestError(f"the manifest is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ManifestError(f"the manifest must be a JSON object, got {type(body).__name__}")
        unknown = set(body) - _KEYS
        missing = _KEYS - set(body)
        if unknown:
            raise ManifestError(f"the manifest has unknown field(s): {', '.join(sorted(map(repr, unknown)))}")
        if missing:
            raise ManifestError(f"the manifest lacks field(s): {', '.join(sorted(missing))}")
        if body["format"] != FORMAT:
            raise ManifestError(f"the manifest format is {body['format']!r}; this plugin reads {FORMAT!r}")
        version = parse_version(body["version"])
        description = body["description"]
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise ManifestError(f"description must be a string of at most {MAX_DESCRIPTION} characters")
        created_at = _timestamp(body["created_at"], "created_at")
        expires_at = _timestamp(body["expires_at"], "expires_at")
        if expires_at <= created_at:
            raise ManifestError("expires_at must be later than created_at")
        apps = _list(body["apps"], "apps", MAX_APPS)
        requirements = _list(body["requirements"], "requirements", MAX_REQUIREMENTS)
        files_raw = _list(body["files"], "files", MAX_FILES)
        files = tuple(_file_entry(entry) for entry in files_raw)
        _check_collisions(f.path for f in files)
        checked_apps = tuple(check_module(a) for a in apps)
        if len(set(checked_apps)) != len(checked_apps):
            raise ManifestError("apps names a module twice")
        return cls(
            version=version,
            description=description,
            created_at=created_at,
            expires_at=expires_at,
            apps=checked_apps,
            requirements=tuple(check_requirement(r) for r in requirements),
            files=files,
            raw=raw,
        )

    # --- derived ---------------------------------------------------------------------------------------

    @property
    def version_text(self) -> str:
        return str(self.version)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def archive_bound(self, signature_bytes: int = 4096) -> int:
        """The most bytes a zip of these files can honestly take (deflate's worst case and zip headers included)."""
        headers = sum(2 * len(f.path.encode()) + 200 for f in self.files)
        return self.total_size + self.total_size // 500 + headers + 2 * len(self.raw) + signature_bytes + 8192

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version_text,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "apps": list(self.apps),
            "requirements": list(self.requirements),
            "files": len(self.files),
            "size": self.total_size,
        }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"the manifest repeats the key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ManifestError(f"the manifest contains {name}, which is not JSON")


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise ManifestError(f"{what} has {len(value)} entries, over the limit of {limit}")
    return value


def _file_entry(entry: Any) -> FileEntry:
    if not isinstance(entry, dict) or set(entry) != _FILE_KEYS:
        shown = repr(entry)[:200]
        raise ManifestError(f"each files entry must be an object with exactly path, sha256 and size, got {shown}")
    path = check_path(entry["path"])
    digest = entry["sha256"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ManifestError(f"file {path!r}: sha256 must be 64 lowercase hex digits")
    size = entry["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
        raise ManifestError(f"file {path!r}: size must be a whole number of bytes >= 0, got {size!r}")
    return FileEntry(path=path, sha256=digest, size=size)


def _check_collisions(paths: Iterable[str]) -> None:
    """No path twice (case-insensitively: releases must unpack the same on every file system) and no file
    that is also another's folder."""
    seen: set[str] = set()
    folders: set[str] = set()
    for path in paths:
        key = path.casefold()
        if key in seen:
            raise ManifestError(f"file path {path!r} appears twice (paths are compared case-insensitively)")
        seen.add(key)
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = seen & folders
    if clash:
        raise ManifestError(f"{sorted(clash)[0]!r} is both a file and a folder")
