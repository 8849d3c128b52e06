"""README "Production Redis": every recipe runs as written (bash, a temp dir, free ports), and works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hive_framework.embedded import free_port

from .redis_servers import cluster_port, need

pytestmark = pytest.mark.redis

README = Path(__file__).resolve().parent.parent / "README.md"


def recipe(name: str) -> str:
    pattern = rf"<!-- not run: recipe {name};[^\n]*-->\n```bash\n(.*?)^```"
    match = re.search(pattern, README.read_text(), flags=re.S | re.M)
    assert match, f"README.md has no recipe {name!r}"
    return match.group(1)


def stop_pids(folder: Path) -> None:
    for pidfile in folder.rglob("*.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            continue


def run_recipe(name: str, tmp_path: Path, ports: list[str]) -> subprocess.CompletedProcess[str]:
    need("redis-server")
    need("openssl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({port: str(cluster_port() if port.startswith("CLUSTER") else free_port()) for port in ports})
    try:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", recipe(name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
    finally:
        stop_pids(tmp_path)


def test_tls_recipe(tmp_path: Path) -> None:
    done = run_recipe("tls", tmp_path, ["TLS_PORT"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"^rediss://127\.0\.0\.1:\d+/0: redis \d+\.\d+\.\d+, role master", done.stdout, re.M), done.stdout


def test_acl_recipe(tmp_path: Path) -> None:
    done = run_recipe("acl", tmp_path, ["ACL_PORT"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"^redis://shop-nexus:\*\*\*@127\.0\.0\.1:\d+/0: redis .*role master", done.stdout, re.M)
    acl_file = (tmp_path / "users.acl").read_text()
    assert "user shop-spore reset on #" in acl_file and "~shop:*" in acl_file and "&shop:broadcast" in acl_file
    assert "user default off" in acl_file


def test_sentinel_recipe(tmp_path: Path) -> None:
    need("redis-sentinel")
    done = run_recipe("sentinel", tmp_path, ["PRIMARY_PORT", "REPLICA_PORT", "SENTINEL1_PORT", "SENTINEL2_PORT",
                                             "SENTINEL3_PORT"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"^redis\+sentinel://.*/hive: redis .*, role master, 1 replica\(s\)$", done.stdout, re.M)


def test_cluster_recipe(tmp_path: Path) -> None:
    need("redis-cli")
    done = run_recipe("cluster", tmp_path, ["CLUSTER_PORT1", "CLUSTER_PORT2", "CLUSTER_PORT3"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"redis\+cluster://[^ ]*: redis .*, role master", done.stdout), done.stdout  # after colours
