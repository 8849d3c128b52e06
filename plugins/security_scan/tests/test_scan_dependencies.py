"""The dependency-file checks: unpinned requirements, plain-HTTP indexes and TLS opt-outs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_plugin_security_scan.dependencies import check_file, is_dependency_file


def _check(tmp_path: Path, name: str, text: str) -> list[tuple[str, int, str]]:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text, encoding="utf-8")
    return [(f.rule, f.line, f.message) for f in check_file(tmp_path, name)]


@pytest.mark.parametrize(
    ("path", "checked"),
    [
        ("requirements.txt", True),
        ("requirements-dev.txt", True),
        ("dev-requirements.txt", True),
        ("requirements/base.txt", True),
        ("constraints.txt", True),
        ("sub/pyproject.toml", True),
        ("notes.txt", False),
        ("requirements.in", False),
        ("setup.cfg", False),
    ],
)
def test_which_files_are_dependency_files(path: str, checked: bool) -> None:
    assert is_dependency_file(path) is checked


def test_requirements_pins_and_indexes(tmp_path: Path) -> None:
    # Given a requirements file mixing pinned, unpinned and insecure lines
    text = "\n".join(
        [
            "# comment",  # 1
            "flask==3.0.3  # pinned",  # 2
            "requests",  # 3: unpinned
            "PyYAML>=5.1,<7",  # 4: a range is not a pin
            "attrs==23.*",  # 5: a wildcard is not a pin
            "idna===3.7",  # 6: arbitrary equality pins
            "-i http://mirror.example/simple",  # 7
            "--extra-index-url=https://ok.example/simple",  # 8: https is fine
            "--trusted-host mirror.example",  # 9
            "-r other.txt",  # 10: checked on its own
            "certifi==2024.2.2 \\",  # 11: continuation, with a hash
            "    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000",  # 12
            "legacy @ http://files.example/legacy-1.0.tar.gz",  # 13
            "tool @ git+https://github.com/x/tool.git",  # 14: branch head
            "tool2 @ git+https://github.com/x/tool2.git@0123456789abcdef0123456789abcdef01234567",  # 15
            "./local/package",  # 16: a path, nothing to pin
            'colorama; sys_platform == "win32"',  # 17: unpinned, with a marker
        ]
    )
    found = _check(tmp_path, "requirements.txt", text)
    # Then each problem is reported once, on its own (first) line
    assert [(rule, line) for rule, line, _ in found] == [
        ("DEP001", 3), ("DEP001", 4), ("DEP001", 5), ("DEP002", 7), ("DEP003", 9), ("DEP002", 13), ("DEP001", 14),
        ("DEP001", 17),
    ]
    assert "pin it as requests==X.Y.Z" in found[0][2]
    assert "http://mirror.example/simple" in found[3][2]


def test_pyproject_flags_only_unconstrained_dependencies_and_insecure_indexes(tmp_path: Path) -> None:
    text = """\
[project]
name = "x"
dependencies = [
    "attrs>=23",
    "requests",
]

[project.optional-dependencies]
dev = ["pytest>=8", "requests"]

[dependency-groups]
lint = ["ruff", {include-group = "dev"}]

[build-system]
requires = ["hatchling"]

[tool.uv]
extra-index-url = ["http://mirror.example/simple"]
allow-insecure-host = ["mirror.example"]

[[tool.poetry.source]]
name = "corp"
url = "http://corp.example/simple"

[tool.poetry.dependencies]
python = "^3.11"
numpy = "*"
"""
    found = _check(tmp_path, "pyproject.toml", text)
    assert [(rule, line) for rule, line, _ in found] == [
        ("DEP001", 5),  # "requests" in [project]
        ("DEP001", 9),  # the second "requests", on its own line
        ("DEP001", 12),  # "ruff"
        ("DEP001", 27),  # numpy = "*"
        ("DEP002", 18),
        ("DEP003", 19),
        ("DEP002", 23),
    ]


def test_broken_pyproject_is_not_an_error(tmp_path: Path) -> None:
    assert _check(tmp_path, "pyproject.toml", "[project\nname = ") == []


def test_clean_sample_requirements_yield_nothing() -> None:
    from conftest import CLEAN

    assert check_file(CLEAN, "requirements.txt") == []
    assert check_file(CLEAN, "pyproject.toml") == []
