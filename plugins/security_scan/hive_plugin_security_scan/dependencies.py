"""Our own check of dependency files: unpinned requirements and package indexes reached insecurely.

Rules:

- ``DEP001`` unpinned-requirement (low). In a requirements file (``requirements*.txt``, ``*requirements.txt``,
  ``constraints*.txt``, ``requirements/*.txt``) a requirement not pinned to one version with ``==`` or
  ``===`` (a VCS URL without ``@ref`` counts too): an application's installs must be reproducible. In
  ``pyproject.toml``, where ranges are normal for libraries, only a dependency with no version constraint
  at all (``"requests"``), and a Poetry ``"*"``.
- ``DEP002`` insecure-index-url (high). An index, extra index, find-links or requirement URL over plain
  ``http://``: whoever sits on the network can serve any code.
- ``DEP003`` trusted-host (medium). ``--trusted-host`` (or uv's ``allow-insecure-host``, PDM's
  ``verify_ssl = false``) turns off TLS checks for that host.

Nothing here touches the network.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .findings import Finding

TOOL = "dependencies"
RULES: dict[str, tuple[str, str, str]] = {
    # id: (name, severity, description)
    "DEP001": ("unpinned-requirement", "low", "Requirement not pinned to one version"),
    "DEP002": ("insecure-index-url", "high", "Package index or requirement fetched over plain HTTP"),
    "DEP003": ("trusted-host", "medium", "TLS verification turned off for a package host"),
}
CWE = {"DEP001": 1357, "DEP002": 319, "DEP003": 295}
HELP_URL = "https://pip.pypa.io/en/stable/topics/secure-installs/"

INDEX_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}
PER_REQUIREMENT_OPTIONS = re.compile(r"\s+--")
EDITABLE_OPTIONS = {"-e", "--editable"}
COMMENT = re.compile(r"(^|\s+)#.*$")
VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")


def is_dependency_file(path: str) -> bool:
    """True for the files this module checks (``path`` is relative, with ``/`` separators)."""
    pure = PurePosixPath(path)
    name = pure.name.lower()
    if name == "pyproject.toml":
        return True
    if not name.endswith(".txt"):
        return False
    return "requirements" in name or name.startswith("constraints") or pure.parent.name.lower() == "requirements"


def _finding(rule: str, path: str, line: int, message: str) -> Finding:
    name, severity, _ = RULES[rule]
    return Finding(
        tool=TOOL, rule=rule, name=name, severity=severity, confidence="high", path=path, line=line,
        message=message, cwe=CWE[rule], help_url=HELP_URL,
    )


def check_file(root: Path, path: str) -> list[Finding]:
    """The findings in one dependency file (``root / path``)."""
    text = (root / path).read_text(encoding="utf-8", errors="replace")
    if PurePosixPath(path).name.lower() == "pyproject.toml":
        return list(_check_pyproject(path, text))
    return list(_check_requirements(path, text))


# --------------------------------------------------------------------------------------------------
# requirements files
# --------------------------------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line: comments dropped, ``\\`` continuations joined."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        line = COMMENT.sub("", raw)
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(p.strip() for p in parts).strip()
        parts = []
        if joined:
            yield start, joined


def _insecure(url: str) -> bool:
    lowered = url.lower()
    return lowered.startswith("http://") or any(lowered.startswith(p + "http://") for p in VCS_PREFIXES)


def _check_requirements(path: str, text: str) -> Iterator[Finding]:
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            tokens = line.split()
            option, _, inline = tokens[0].partition("=")
            value = inline or (tokens[1] if len(tokens) > 1 else "")
            if option in INDEX_OPTIONS and _insecure(value):
                yield _finding("DEP002", path, number, f"{option} {value} is plain HTTP; use https://")
            elif option == "--trusted-host":
                yield _finding("DEP003", path, number, f"--trusted-host {value} turns off TLS verification for it")
            elif option in EDITABLE_OPTIONS and _insecure(value):
                yield _finding("DEP002", path, number, f"{value} is fetched over plain HTTP; use https://")
            continue  # -r/-c name files checked on their own; other options pin nothing
        spec = PER_REQUIREMENT_OPTIONS.split(line, maxsplit=1)[0]  # drop --hash=... and the like
        yield from _check_requirement(path, number, spec, pinned_required=True)


def _check_requirement(path: str, number: int, spec: str, *, pinned_required: bool) -> Iterator[Finding]:
    if _insecure(spec):
        yield _finding("DEP002", path, number, f"{spec} is fetched over plain HTTP; use https://")
        return
    try:
        requirement = Requirement(spec)
    except InvalidRequirement:
        return  # a local path or an archive URL: nothing to pin
    if requirement.url:
        if _insecure(requirement.url):
            yield _finding("DEP002", path, number, f"{requirement.name} is fetched over plain HTTP; use https://")
        elif requirement.url.startswith(VCS_PREFIXES) and "@" not in requirement.url.split("://", 1)[-1]:
            yield _finding("DEP001", path, number, f"{requirement.name} follows a branch head; pin a commit with @")
        return
    specifiers = list(requirement.specifier)
    if not pinned_required:
        if not specifiers:
            yield _finding("DEP001", path, number, f"{requirement.name} has no version constraint")
        return
    exact = len(specifiers) == 1 and (
        specifiers[0].operator == "===" or (specifiers[0].operator == "==" and not specifiers[0].version.endswith("*"))
    )
    if not exact:
        shown = str(requirement.specifier) or "any version"
        yield _finding(
            "DEP001", path, number, f"{requirement.name} is not pinned ({shown}); pin it as {requirement.name}==X.Y.Z"
        )


# --------------------------------------------------------------------------------------------------
# pyproject.toml
# --------------------------------------------------------------------------------------------------


class _Lines:
    """Finds the line of a TOML string value; a value met again is looked for after its last line."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.last: dict[str, int] = {}

    def of(self, value: str) -> int:
        quoted = (f'"{value}"', f"'{value}'")
        after = self.last.get(value, 0)
        for number, line in enumerate(self.lines[after:], start=after + 1):
            if any(q in line for q in quoted):
                self.last[value] = number
                return number
        return after or 1


def _check_pyproject(path: str, text: str) -> Iterator[Finding]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    lines = _Lines(text)
    project = data.get("project", {})
    groups: list[Any] = [project.get("dependencies", [])]
    groups += list(project.get("optional-dependencies", {}).values())
    groups += list(data.get("dependency-groups", {}).values())
    for group in groups:
        for spec in group if isinstance(group, list) else []:
            if isinstance(spec, str):  # dependency-groups may hold {include-group = ...} tables
                yield from _check_requirement(path, lines.of(spec), spec, pinned_required=False)
    tool = data.get("tool", {})
    yield from _check_poetry(path, tool.get("poetry", {}), text)
    yield from _check_index_urls(path, tool, lines)


def _check_poetry(path: str, poetry: Any, text: str) -> Iterator[Finding]:
    if not isinstance(poetry, dict):
        return
    tables = [poetry.get("dependencies", {})]
    tables += [g.get("dependencies", {}) for g in poetry.get("group", {}).values() if isinstance(g, dict)]
    for table in tables:
        for name, value in table.items() if isinstance(table, dict) else []:
            version = value.get("version") if isinstance(value, dict) else value
            if name != "python" and version == "*":
                line = next(
                    (n for n, t in enumerate(text.splitlines(), 1) if re.match(rf"\s*{re.escape(name)}\s*=", t)), 1
                )
                yield _finding("DEP001", path, line, f"{name} accepts any version ('*')")


def _walk_strings(value: Any, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk_strings(inner, (*keys, str(key)))
    elif isinstance(value, list):
        for inner in value:
            yield from _walk_strings(inner, keys)
    else:
        yield keys, value


def _check_index_urls(path: str, tool: Any, lines: _Lines) -> Iterator[Finding]:
    """Index settings of uv, Poetry, PDM, Hatch and pip-tools sections: plain-HTTP URLs and TLS opt-outs."""
    if not isinstance(tool, dict):
        return
    for keys, value in _walk_strings(tool):
        last = keys[-1] if keys else ""
        if isinstance(value, str) and _insecure(value) and any(
            word in key for key in keys for word in ("index", "source", "url", "find-links")
        ):
            yield _finding("DEP002", path, lines.of(value), f"{'.'.join(keys)} = {value} is plain HTTP; use https://")
        elif isinstance(value, str) and last in ("allow-insecure-host", "trusted-host"):
            yield _finding("DEP003", path, lines.of(value), f"{'.'.join(keys)} turns off TLS verification for {value}")
        elif value is False and last == "verify_ssl":
            yield _finding("DEP003", path, 1, f"{'.'.join(keys)} = false turns off TLS verification")
