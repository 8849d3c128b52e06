"""Keys, app sources, package tampering and supervised spore processes for the OTA tests (fixtures in conftest).

hive's own fixtures (``hive_config``, ``hive_redis_url``, ``wait_until``...) come from ``hive_framework.testing``
through its pytest11 entry point.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import textwrap
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hive_framework import HiveConfig, Kernel, MessageBroker, TaskStatus
from hive_framework.testing import SporeProcess, async_wait_until, child_env, spawn_hive

from hive_plugin_ota import OTAManager, UpdatePackage
from hive_plugin_ota.package import build_package
from hive_plugin_ota.signing import generate_key, public_key_text, write_private_key

APP = "otaapp"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trusted signing key and a stranger's key, both as objects and as PEM files."""
    folder = tmp_path_factory.mktemp("keys")
    out: dict[str, Any] = {}
    for name in ("trusted", "stranger"):
        key = generate_key()
        write_private_key(key, folder / f"{name}.key")
        out[name] = key
        out[f"{name}_path"] = folder / f"{name}.key"
        out[f"{name}_public"] = public_key_text(key)
    return out


def write_app(folder: Path, body: str) -> Path:
    """An app package ``otaapp`` in ``folder`` whose ``__init__`` is ``body``; returns the package folder."""
    package = folder / APP
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"\0junk")
    return package


def version_app(result: str, *, extra: str = "") -> str:
    return f"""
        from hive_framework import task
        {extra}

        @task("ota_version", max_retries=0)
        def ota_version(payload):
            return {result}
    """


def make_package(key: Ed25519PrivateKey, folder: Path, version: str, body: str, *,
                 requirements: list[str] | None = None, ttl: float = 86400.0) -> UpdatePackage:
    src = folder / f"src-{version}-{uuid.uuid4().hex[:6]}"
    package_dir = write_app(src, body)
    return build_package(key, version=version, description=f"release {version}", source_paths=[package_dir],
                         out_dir=folder / f"out-{uuid.uuid4().hex[:6]}", requirements=requirements, ttl=ttl)


def rewrite_zip(package: UpdatePackage, dest: Path, *, extra: Sequence[tuple[zipfile.ZipInfo, bytes]] = (),
                drop: tuple[str, ...] = ()) -> UpdatePackage:
    """A copy of ``package`` with members added or removed (manifest and signature kept as they were)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(package.path) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            if info.filename not in drop:
                out.writestr(info, src.read(info))
        for info, data in extra:
            out.writestr(info, data)
    return UpdatePackage.from_file(dest)


def flip_byte(package: UpdatePackage, dest: Path, member: str) -> Path:
    """A copy of the package with one byte of ``member``'s stored data flipped."""
    data = bytearray(package.path.read_bytes())
    with zipfile.ZipFile(package.path) as archive:
        info = archive.getinfo(member)
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0x01
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return dest


def link_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def make_wheel(folder: Path, name: str, version: str, module_body: str) -> Path:
    """A minimal pure-Python wheel, written by hand (nothing is downloaded or built)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_body.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record_lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(data)}")
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


class SupervisedSpore(SporeProcess):
    """``python -m hive_framework ota spore --name NAME`` as a real OS process, with its own state folder."""

    def __init__(
self, config: HiveConfig, name: str, *, toml: Path, state_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.state_dir = state_dir
        env = child_env(config, {"HIVE_CONFIG": str(toml), "HIVE_STATE_DIR": str(state_dir)},
                        pythonpath=[os.getcwd()])
        self.log_path = log_dir / f"supervised-{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = spawn_hive(["ota", "spore", "--name", name, "--concurrency", "2"], env=env, stdout=self._log,
                               stderr=subprocess.STDOUT)

    @property
    def root(self) -> Path:
        return self.state_dir / "ota"

    def releases(self) -> list[str]:
        folder = self.root / "releases"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "current")
        except OSError:
            return None


@attrs.define
class OTAHive:
    """One test's hive: settings, a TOML file the spores read, and helpers to start spores and run tasks."""

    config: HiveConfig
    toml: Path
    tmp: Path
    keys: dict[str, Any]
    started: list[SupervisedSpore] = attrs.field(factory=list)

    def spore(self, name: str) -> SupervisedSpore:
        proc = SupervisedSpore(self.config, name, toml=self.toml, state_dir=self.tmp / f"state-{name}",
                               log_dir=self.tmp)
        self.started.append(proc)
        return proc

    def package(self, version: str, body: str, **options: Any) -> UpdatePackage:
        return make_package(self.keys["trusted"], self.tmp / "packages", version, body, **options)

    @contextlib.asynccontextmanager
    async def manager(self) -> AsyncIterator[OTAManager]:
        async with MessageBroker(Kernel(self.config)) as broker:
            yield OTAManager(broker, signing_key=self.keys["trusted"])


def ota_section(keys: dict[str, Any], tmp: Path, **more: Any) -> dict[str, Any]:
    return {
        "trusted_keys": [keys["trusted_public"]],
        "signing_key": str(keys["trusted_path"]),
        "health_window": 20,
        "pip_args": ["--no-index", "--find-links", str(tmp / "wheels")],
        **more,
    }


def toml_text(section: dict[str, Any]) -> str:
    return "[plugins.ota]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items())


@pytest.fixture
def ota_hive(hive_config: HiveConfig, keys: dict[str, Any], tmp_path: Path) -> Iterator[OTAHive]:
    section = ota_section(keys, tmp_path)
    toml = tmp_path / "hive.toml"
    toml.write_text(toml_text(section), encoding="utf-8")
    (tmp_path / "wheels").mkdir()
    hive = OTAHive(config=hive_config.evolve(plugins={"ota": section}), toml=toml, tmp=tmp_path, keys=keys)
    yield hive
    for proc in hive.started:
        if proc.proc.poll() is None:
            proc.stop()


async def run_on(broker: Any, node: str, task_type: str = "ota_version", timeout: float = 20.0) -> Any:
    """Run one task pinned to ``node`` and return its result (fail the test when it does not complete)."""
    task_id = await broker.enqueue_task(task_type, {}, "high_priority", node=node, max_retries=0, timeout=timeout)
    message = await broker.wait_for_task(task_id, timeout)
    assert message.status == TaskStatus.COMPLETED, (node, message.status, message.error)
    return message.result


async def wait_online(broker: Any, names: list[str], timeout: float = 20.0) -> None:
    async def online() -> bool:
        return set(names) <= {n.node_id for n in await broker.get_nodes()}

    await async_wait_until(online, timeout=timeout, what=f"spores {names} online")
