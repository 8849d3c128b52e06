"""Who may update a spore: signatures, expiry, versions only going up, forced downgrades and signed rollbacks."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hive_framework import ConfigError, HiveConfig
from ota_helpers import make_package, version_app

from hive_plugin_ota import OTAManager, OTASettings, runtime
from hive_plugin_ota.errors import OTAError, PackageRejected
from hive_plugin_ota.manifest import FileEntry, Manifest
from hive_plugin_ota.package import UpdatePackage
from hive_plugin_ota.releases import ReleaseStore
from hive_plugin_ota.signing import (
    MANIFEST_DOMAIN,
    TrustStore,
    load_private_key,
    sign,
    sign_command,
    verify_command,
)
from hive_plugin_ota.updater import Updater


class FakeSpore:
    """What the updater uses of a spore, without Redis: config, ids, a log, request_stop."""

    def __init__(self, config: HiveConfig) -> None:
        self.config = config
        self.node_id = self.node_name = "n1"
        self.log = logging.getLogger("test.ota")
        self.stop_requested = False

    @property
    def broker(self) -> Any:
        raise RuntimeError("no Redis in these tests")

    def request_stop(self) -> None:
        self.stop_requested = True


@pytest.fixture
def supervised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "SUPERVISED", True)


@pytest.fixture
def updater(keys: dict[str, Any], tmp_path: Path) -> Updater:
    config = HiveConfig.load(environ={}, env_file="/dev/null", toml_file=None, plugins={"ota": {
        "trusted_keys": [keys["trusted_public"]], "root": str(tmp_path / "ota"),
    }})
    return Updater(FakeSpore(config))


def ticket(package: UpdatePackage, **changes: Any) -> dict[str, Any]:
    return {**package.ticket(f"file://{package.path}"), **changes}


def test_settings_refuse_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'health_windw'"):
        OTASettings.from_mapping({"health_windw": 3})
    with pytest.raises(ConfigError, match="health_window"):
        OTASettings.from_mapping({"health_window": -1})
    with pytest.raises(ConfigError, match="trusted_keys"):
        TrustStore.from_texts(["not base64!"])
    assert OTASettings.from_mapping({"trusted_keys": "a, b", "pip_args": ["--no-index"]}).trusted_keys == ("a", "b")


def test_private_keys_load_only_when_they_are_ed25519(keys: dict[str, Any], tmp_path: Path) -> None:
    assert load_private_key(keys["trusted_path"]).public_key() is not None
    (tmp_path / "junk.key").write_text("nope")
    with pytest.raises(OTAError, match="not an unencrypted PEM"):
        load_private_key(tmp_path / "junk.key")
    with pytest.raises(OTAError, match="no signing key"):
        load_private_key("")


def test_an_unsupervised_spore_refuses_updates(updater: Updater, keys: dict[str, Any], tmp_path: Path) -> None:
    package = make_package(keys["trusted"], tmp_path, "1.0", version_app('"v1"'))
    with pytest.raises(PackageRejected, match="hive ota spore"):
        updater.supervised_or_reject()
    assert updater.check(ticket(package)).manifest.version_text == "1.0"


def test_signature_and_manifest_checks(updater: Updater, keys: dict[str, Any], tmp_path: Path) -> None:
    package = make_package(keys["trusted"], tmp_path, "1.0", version_app('"v1"'))
    stranger = make_package(keys["stranger"], tmp_path, "1.0", version_app('"v1"'))
    altered = package.manifest.raw.replace(b"release 1.0", b"release 1.1")
    now = datetime.now(UTC)
    expired = Manifest.create(version="1.0", description="", created_at=now - timedelta(days=2),
                              expires_at=now - timedelta(days=1), files=[FileEntry("a.py", "a" * 64, 1)])
    future = Manifest.create(version="1.0", description="", created_at=now + timedelta(days=2),
                             expires_at=now + timedelta(days=3))
    cases = {
        "does not trust": ticket(stranger),
        "not signed": ticket(package, signature=None),
        "malformed signature": ticket(package, signature="{"),
        "does not match": ticket(package, manifest=altered.decode()),
        "expired": ticket(package, manifest=expired.raw.decode(),
                          signature=sign(keys["trusted"], MANIFEST_DOMAIN, expired.raw)),
        "in the future": ticket(package, manifest=future.raw.decode(),
                                signature=sign(keys["trusted"], MANIFEST_DOMAIN, future.raw)),
        "announced version": ticket(package, version="9.9"),
        "checksum must be": ticket(package, checksum="abc"),
        "no manifest": ticket(package, manifest=None),
    }
    for reason, data in cases.items():
        with pytest.raises(PackageRejected, match=reason):
            updater.check(data)


def test_versions_only_go_up_unless_a_signed_order_forces_one(
    updater: Updater, keys: dict[str, Any], tmp_path: Path
) -> None:
    # Given a node that has trusted 2.0
    updater.store.record_highest(Manifest.parse(make_package(
        keys["trusted"], tmp_path, "2.0", version_app('"v2"')).manifest.raw).version)
    old = make_package(keys["trusted"], tmp_path, "1.5", version_app('"v1.5"'))
    same = make_package(keys["trusted"], tmp_path, "2.0", version_app('"v2 again"'))
    newer = make_package(keys["trusted"], tmp_path, "2.0.1", version_app('"v2.0.1"'))
    # Then lower and equal versions are refused, a higher one passes
    for package in (old, same):
        with pytest.raises(PackageRejected, match=r"not newer than 2\.0"):
            updater.check(ticket(package))
    assert updater.check(ticket(newer)).force_nonce is None
    # and a force order passes only when signed by a trusted key for this very manifest
    digest = hashlib.sha256(old.manifest.raw).hexdigest()
    force = sign_command(keys["trusted"], "force", 60, manifest_sha256=digest)
    assert updater.check(ticket(old, force=force)).force_nonce is not None
    other = sign_command(keys["trusted"], "force", 60, manifest_sha256="0" * 64)
    with pytest.raises(PackageRejected, match="another package"):
        updater.check(ticket(old, force=other))
    with pytest.raises(PackageRejected, match="does not trust"):
        updater.check(ticket(old, force=sign_command(keys["stranger"], "force", 60, manifest_sha256=digest)))
    with pytest.raises(PackageRejected, match="another purpose"):
        updater.check(ticket(old, force=sign_command(keys["trusted"], "rollback", 60, manifest_sha256=digest)))
    # and an order is used once
    updater.store.use_nonce("abc", datetime.now(UTC).timestamp() + 60)
    with pytest.raises(PackageRejected, match="replay"):
        updater.store.use_nonce("abc", datetime.now(UTC).timestamp() + 60)


def test_signed_orders_expire(keys: dict[str, Any]) -> None:
    trust = TrustStore.from_texts([keys["trusted_public"]])
    order = sign_command(keys["trusted"], "rollback", 60, to=None)
    assert verify_command(trust, order, "rollback")["purpose"] == "rollback"
    with pytest.raises(PackageRejected, match="expired"):
        verify_command(trust, order, "rollback", now=datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(PackageRejected, match="does not match"):
        verify_command(trust, {**order, "statement": order["statement"].replace("rollback", "rollbacK")}, "rollback")


async def test_the_seeds_apply_update_installs_from_a_url_and_hands_over(
    updater: Updater, supervised: None, keys: dict[str, Any], tmp_path: Path
) -> None:
    # Given a package on disk and the seed's call: a URL and a checksum, nothing else
    package = make_package(keys["trusted"], tmp_path, "1.0", version_app('"v1"'))
    manager = OTAManager(_Broker(updater.config), spore=updater.spore)  # type: ignore[arg-type]
    # When the spore applies it without restarting
    from hive_plugin_ota import updater as updater_module

    updater_module._UPDATERS[updater.spore] = updater
    outcome = await manager.apply_update(f"file://{package.path}", package.checksum, restart_after=False)
    # Then a release holds its files, the version is trusted, the supervisor is asked to switch, nobody stopped
    store = ReleaseStore(tmp_path / "ota")
    release = store.release(outcome["release"])
    assert release is not None and (release.app_dir / "otaapp" / "__init__.py").is_file()
    assert str(store.highest()) == "1.0"
    pending = store.read_pending()
    assert pending is not None and pending["release"] == release.name
    assert not updater.spore.stop_requested
    # and a wrong checksum is refused without leaving anything behind
    with pytest.raises(PackageRejected, match="checksum mismatch"):
        await manager.apply_update(f"file://{package.path}", "0" * 64, restart_after=False)
    assert [r.name for r in store.releases()] == [release.name]
    assert not list((tmp_path / "ota" / "releases").glob(".incoming-*"))


class _Broker:
    def __init__(self, config: HiveConfig) -> None:
        self.config = config
