"""Packages travel through Redis in chunks or over http(s)/file URLs, always capped; the CLI speaks in one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hive_framework import HiveConfig, Kernel, MessageBroker
from hive_framework.testing import hive_cli
from ota_helpers import make_package, version_app

from hive_plugin_ota import OTAManager, OTASettings
from hive_plugin_ota.cli import ota
from hive_plugin_ota.errors import PackageRejected
from hive_plugin_ota.store import OTAKeys, fetch, store_package, stored_packages

cli = hive_cli(ota)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"x" * 5000
            self.send_response(200)
            if self.path != "/no-length":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_downloads_stop_at_the_cap(http_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    assert await fetch(f"{http_server}/ok", dest, cap=5000, redis=None, keys=None) == 5000
    with pytest.raises(PackageRejected, match="over the 4000 bytes"):
        await fetch(f"{http_server}/ok", dest, cap=4000, redis=None, keys=None)
    with pytest.raises(PackageRejected, match="stopped"):
        await fetch(f"{http_server}/no-length", dest, cap=4000, redis=None, keys=None)
    with pytest.raises(PackageRejected, match="cannot read"):
        await fetch(f"file://{tmp_path}/missing.zip", dest, cap=10, redis=None, keys=None)
    with pytest.raises(PackageRejected, match="unsupported scheme"):
        await fetch("ftp://example/x.zip", dest, cap=10, redis=None, keys=None)


@pytest.mark.redis
async def test_a_package_round_trips_through_redis_in_chunks(hive_config: HiveConfig, keys: dict[str, Any],
                                                             tmp_path: Path) -> None:
    package = make_package(keys["trusted"], tmp_path, "1.0", version_app('"v1"'))
    ota_keys = OTAKeys(hive_config.key_prefix)
    async with MessageBroker(Kernel(hive_config)) as broker:
        url = await store_package(broker.redis, ota_keys, package.path, checksum=package.checksum, version="1.0",
                                  chunk_bytes=100, max_bytes=10**6)
        assert url == f"hive-ota://{package.checksum}"
        assert await broker.redis.llen(ota_keys.data(package.checksum)) == -(-package.size // 100)  # type: ignore[misc]
        dest = tmp_path / "copy.zip"
        assert await fetch(url, dest, cap=10**6, redis=broker.redis, keys=ota_keys) == package.size
        assert dest.read_bytes() == package.path.read_bytes()
        with pytest.raises(PackageRejected, match="allows"):
            await fetch(url, dest, cap=package.size - 1, redis=broker.redis, keys=ota_keys)
        with pytest.raises(PackageRejected, match="not stored"):
            await fetch("hive-ota://" + "0" * 64, dest, cap=10**6, redis=broker.redis, keys=ota_keys)
        assert [p["version"] for p in await stored_packages(broker.redis, ota_keys)] == ["1.0"]


def test_keygen_build_and_mistakes_on_the_command_line(tmp_path: Path, keys: dict[str, Any]) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["ota", "keygen", "--out", str(tmp_path / "k")])
    assert made.exit_code == 0, made.output
    assert "trusted_keys = [" in made.output
    again = runner.invoke(cli, ["ota", "keygen", "--out", str(tmp_path / "k")])
    assert again.exit_code == 1 and "never overwritten" in again.output
    source = tmp_path / "src" / "otaapp"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("x = 1\n")
    built = runner.invoke(cli, ["ota", "build", "1.0", str(source), "--key", str(tmp_path / "k" / "ota-signing.key"),
                                "--out", str(tmp_path / "out"), "-d", "first", "--expires-in", "2"])
    assert built.exit_code == 0, built.output
    described = json.loads(built.output)
    assert (described["version"], described["apps"], described["files"]) == ("1.0", ["otaapp"], 1)
    unsigned = runner.invoke(cli, ["ota", "build", "1.1", str(source), "--out", str(tmp_path / "out")])
    assert unsigned.exit_code == 1 and "no signing key" in unsigned.output
    bad_version = runner.invoke(cli, ["ota", "build", "one", str(source), "--key", str(keys["trusted_path"])])
    assert bad_version.exit_code == 1 and "PEP 440" in bad_version.output
    missing = runner.invoke(cli, ["ota", "publish", str(tmp_path / "nope.zip")])
    assert missing.exit_code == 1 and "no package" in missing.output


@pytest.mark.redis
async def test_list_and_clean_up_packages(hive_config: HiveConfig, keys: dict[str, Any], tmp_path: Path) -> None:
    # Given three packages built by the seed's create_package, one of them published to Redis
    source = tmp_path / "src" / "otaapp"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("x = 1\n")
    settings = OTASettings(package_dir=str(tmp_path / "packages"))
    async with MessageBroker(Kernel(hive_config)) as broker:
        ota = OTAManager(broker, settings=settings, signing_key=keys["trusted"])
        built = [await ota.create_package(v, f"release {v}", [source]) for v in ("1.0", "1.10", "1.9")]
        await ota.publish(built[0])
        # When they are listed
        listed = await ota.list_packages()
        # Then they come in PEP 440 order, with the published one marked
        assert [(p["version"], p["published"]) for p in listed] == [("1.0", True), ("1.9", False), ("1.10", False)]
        # When all but the newest are cleaned up, files and Redis copies go
        removed = await ota.cleanup_old_packages(keep_latest=1)
        assert sorted(Path(p).name for p in removed) == ["hive-ota-1.0.zip", "hive-ota-1.9.zip"]
        assert [p["version"] for p in await ota.list_packages()] == ["1.10"]
        assert await stored_packages(broker.redis, OTAKeys(hive_config.key_prefix)) == []
