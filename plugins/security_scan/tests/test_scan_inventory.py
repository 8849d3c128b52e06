"""Walking a tree as git sees it, and splitting it into shards balanced by size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hive_plugin_security_scan.inventory import FileEntry, collect, plan_shards, shard_budget, shard_label
from hive_plugin_security_scan.settings import ScanSettings


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _paths(root: Path, **kwargs: object) -> list[str]:
    return [f.path for f in collect(root, ScanSettings(**kwargs)).files]  # type: ignore[arg-type]


def test_gitignore_rules_nested_negated_and_from_above(tmp_path: Path) -> None:
    # Given a repository whose top .gitignore, a nested one and the scanned folder's own all say something
    _write(tmp_path, {
        ".gitignore": "*.log\nsecret-dir/\n",
        "project/.gitignore": "build/\n!keep.log\n",
        "project/app.py": "x = 1\n",
        "project/keep.log": "kept by negation\n",
        "project/debug.log": "ignored from above\n",
        "project/build/out.py": "ignored folder\n",
        "project/secret-dir/a.py": "ignored from above\n",
        "project/sub/.gitignore": "generated.py\n",
        "project/sub/generated.py": "ignored below\n",
        "project/sub/real.py": "y = 2\n",
    })
    (tmp_path / ".git").mkdir()
    # When the subfolder project/ is scanned
    inventory = collect(tmp_path / "project", ScanSettings())
    # Then every .gitignore applies as git would apply it, and paths are relative to project/
    assert [f.path for f in inventory.files] == [".gitignore", "app.py", "keep.log", "sub/.gitignore", "sub/real.py"]
    assert inventory.ignored == 4  # debug.log, build/, secret-dir/, sub/generated.py


def test_ignore_files_above_a_repository_do_not_apply(tmp_path: Path) -> None:
    _write(tmp_path, {".gitignore": "*.py\n", "outside/a.py": "x = 1\n"})
    assert _paths(tmp_path / "outside") == ["a.py"]  # no .git: tmp_path's .gitignore is not this tree's


def test_default_excludes_venvs_vendored_and_vcs(tmp_path: Path) -> None:
    _write(tmp_path, {
        "app.py": "x = 1\n",
        ".git/config": "[core]\n",
        ".venv/lib/x.py": "x\n",
        "env-with-other-name/pyvenv.cfg": "home = /usr\n",
        "env-with-other-name/lib/site.py": "x\n",
        "node_modules/pkg/index.js": "x\n",
        "src/vendor/lib.py": "x\n",
        "third_party/lib.py": "x\n",
        "pkg/__pycache__/a.cpython-311.pyc": b"\0\0",
        "pkg.egg-info/PKG-INFO": "x\n",
        "docs/legacy/old.py": "x\n",
    })
    assert _paths(tmp_path, exclude=["docs/legacy/"]) == ["app.py"]


def test_binary_large_and_linked_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    _write(tmp_path, {
        "text.py": "x = 1\n",
        "image.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "notes.png": "text, whatever the suffix says\n",
        "blob.dat": b"abc\0def",
        "big.txt": "x" * 5000,
    })
    os.symlink(tmp_path / "text.py", tmp_path / "link.py")
    inventory = collect(tmp_path, ScanSettings(max_file_bytes=4096))
    assert [f.path for f in inventory.files] == ["notes.png", "text.py"]
    reasons = {s.path: s.reason for s in inventory.skipped}
    assert reasons["image.png"] == reasons["blob.dat"] == "binary file"
    assert reasons["big.txt"].startswith("larger than 4096 bytes")
    assert reasons["link.py"] == "symbolic link (not followed)"


def test_a_single_file_is_scanned_relative_to_its_folder(tmp_path: Path) -> None:
    _write(tmp_path, {"requirements.txt": "requests\n", "other.py": "x = 1\n"})
    inventory = collect(tmp_path / "requirements.txt", ScanSettings())
    assert inventory.root == tmp_path.resolve()
    assert [f.path for f in inventory.files] == ["requirements.txt"]


def test_shards_are_balanced_by_size_and_deterministic() -> None:
    # Given files of very different sizes
    files = [FileEntry(f"f{i:02d}.py", size) for i, size in enumerate([9000, 7000, 5000, 3000, 1000] * 4)]
    # When they are split into 4 shards
    shards = plan_shards(files, 4, ScanSettings())
    # Then every file is in exactly one shard, and the shards weigh about the same
    assert sorted(f.path for shard in shards for f in shard) == sorted(f.path for f in files)
    weights = [sum(f.size for f in shard) for shard in shards]
    assert len(shards) == 4 and max(weights) - min(weights) <= 1000
    assert shards == plan_shards(list(reversed(files)), 4, ScanSettings())


def test_shard_limits_add_shards() -> None:
    files = [FileEntry(f"f{i}.py", 10_000) for i in range(12)]
    settings = ScanSettings(max_shard_bytes=60_000, max_shard_files=3)
    shards = plan_shards(files, 1, settings)
    assert all(len(s) <= 3 and sum(f.archived_bytes for f in s) <= shard_budget(settings) for s in shards)
    assert len(shards) >= 4
    # never more shards than files
    assert len(plan_shards(files[:2], 50, ScanSettings())) == 2
    assert plan_shards([], 4, ScanSettings()) == []


def test_a_file_too_big_for_any_shard_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        plan_shards([FileEntry("huge.py", 10**9)], 1, ScanSettings())


def test_shard_label_names_the_common_folder() -> None:
    assert shard_label(["app/a.py", "app/b/c.py"]) == "app/ (2 files)"
    assert shard_label(["a.py", "app/b.py"]) == "./ (2 files)"
    assert shard_label(["requirements.txt"]) == "./ (1 file)"


def test_shards_are_queued_heaviest_first() -> None:
    # Spores claim in queue order: the heaviest shards must start first so that a light one ends the scan
    files = [FileEntry(f"f{i:02d}.py", size) for i, size in enumerate([50_000, 1000, 1000, 1000, 20_000, 500])]
    shards = plan_shards(files, 3, ScanSettings())
    weights = [sum(f.archived_bytes for f in shard) for shard in shards]
    assert weights == sorted(weights, reverse=True) and weights[0] > weights[-1]
