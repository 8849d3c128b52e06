"""Manifests come from the network: parsing must accept exactly the valid ones and say why it refuses the rest."""

from __future__ import annotations

import contextlib
import json
import posixpath
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_plugin_ota.errors import ManifestError
from hive_plugin_ota.manifest import FileEntry, Manifest, check_path

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SHA = "a" * 64


def valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": "hive-ota/1",
        "version": "1.2.0",
        "description": "new things",
        "created_at": NOW.isoformat(),
        "expires_at": (NOW + timedelta(days=1)).isoformat(),
        "apps": ["myapp.tasks"],
        "requirements": ["tinydep==1.0"],
        "files": [{"path": "myapp/tasks.py", "sha256": SHA, "size": 10}],
    }
    body.update(changes)
    return body


def parse(body: Any) -> Manifest:
    return Manifest.parse(json.dumps(body).encode())


def test_a_valid_manifest_parses_and_keeps_its_exact_bytes() -> None:
    raw = json.dumps(valid_body()).encode()
    manifest = Manifest.parse(raw)
    assert manifest.version_text == "1.2.0"
    assert manifest.files == (FileEntry("myapp/tasks.py", SHA, 10),)
    assert manifest.raw == raw
    assert manifest.archive_bound() > manifest.total_size


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": "one"}, "not a PEP 440 version"),
        ({"format": "other/9"}, "format"),
        ({"extra": 1}, "unknown field"),
        ({"expires_at": NOW.isoformat()}, "later than created_at"),
        ({"created_at": "2030-01-01T00:00:00"}, "no time zone"),
        ({"apps": ["not a module"]}, "dotted Python module"),
        ({"requirements": ["--index-url http://evil"]}, "pip option"),
        ({"requirements": ["pkg @ https://evil/pkg.whl"]}, "direct URL"),
        ({"files": [{"path": "../x.py", "sha256": SHA, "size": 1}]}, "'..'"),
        ({"files": [{"path": "/etc/passwd", "sha256": SHA, "size": 1}]}, "absolute"),
        ({"files": [{"path": "C:/x.py", "sha256": SHA, "size": 1}]}, "':'"),
        ({"files": [{"path": "a\\b.py", "sha256": SHA, "size": 1}]}, "'\\'"),
        ({"files": [{"path": "a.py", "sha256": "xyz", "size": 1}]}, "sha256"),
        ({"files": [{"path": "a.py", "sha256": SHA, "size": True}]}, "size"),
        ({"files": [{"path": "a.py", "sha256": SHA, "size": -1}]}, "size"),
        ({"files": [{"path": "A.py", "sha256": SHA, "size": 1}, {"path": "a.py", "sha256": SHA, "size": 1}]}, "twice"),
        ({"files": [{"path": "a", "sha256": SHA, "size": 1}, {"path": "a/b", "sha256": SHA, "size": 1}]}, "folder"),
    ],
)
def test_a_bad_manifest_is_refused_with_its_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ManifestError, match=None) as caught:
        parse(valid_body(**change))
    assert reason in str(caught.value)


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"a": NaN}', b"\xff\xfe", b'{"format": 1, "format": 2}'])
def test_malformed_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.parse(raw)


@given(st.binary(max_size=512))
def test_any_bytes_either_parse_or_raise_manifest_error(raw: bytes) -> None:
    with contextlib.suppress(ManifestError):
        Manifest.parse(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(sorted(valid_body())), json_values)
def test_any_field_replaced_by_any_json_either_parses_or_raises_manifest_error(field: str, value: Any) -> None:
    try:
        manifest = parse(valid_body(**{field: value}))
    except ManifestError:
        return
    # whatever got through is still a manifest whose every file path is safe
    for entry in manifest.files:
        check_path(entry.path)


segment = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=12)


@given(st.lists(segment | st.sampled_from(["..", ".", "", "/", "C:", "\\"]), min_size=1, max_size=6))
def test_an_accepted_path_always_stays_inside_the_release(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        checked = check_path(path)
    except ManifestError:
        return
    joined = posixpath.normpath(posixpath.join("/release/app", checked))
    assert joined.startswith("/release/app/")
    assert ".." not in checked.split("/")


@given(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}(/[a-z][a-z0-9_.]{0,8}){0,3}", fullmatch=True),
                min_size=1, max_size=8, unique_by=str.casefold),
       st.integers(min_value=0, max_value=2**40))
def test_created_manifests_parse_back_to_the_same_fields(paths: list[str], size: int) -> None:
    folders = {"/".join(p.split("/")[:i]).casefold() for p in paths for i in range(1, len(p.split("/")))}
    paths = [p for p in paths if p.casefold() not in folders]
    files = [FileEntry(p, SHA, size) for p in paths]
    manifest = Manifest.create(version="2.0", description="d", created_at=NOW, expires_at=NOW + timedelta(days=1),
                               apps=["a.b"], requirements=["x>=1"], files=files)
    again = Manifest.parse(manifest.raw)
    assert again == manifest
    assert again.files == tuple(files)
