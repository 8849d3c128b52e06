"""The OTA operator's minor points: pruning keeps the last good releases, a relative signing_key is read from
the config file's folder."""

from __future__ import annotations

from pathlib import Path

from hive_plugin_ota.releases import ReleaseStore, write_json
from hive_plugin_ota.settings import OTASettings


def _install(store: ReleaseStore, version: str) -> None:
    folder = store.releases_dir / f"r-{version}"
    folder.mkdir(parents=True)
    write_json(folder / "release.json", {"version": version, "apps": []})


def test_pruning_deletes_rolled_back_releases_before_the_last_good_ones(tmp_path: Path) -> None:
    # Given good releases 1..3, current 3, and 4 and 5 installed but rolled back
    store = ReleaseStore(tmp_path / "ota")
    store.ensure()
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"):
        _install(store, version)
    store.set_pointer("current", store.release("r-3.0.0"))
    store.set_pointer("previous", store.release("r-2.0.0"))
    store.mark_failed("r-4.0.0")
    store.mark_failed("r-5.0.0")

    # When pruning keeps 3
    removed = store.prune(3)

    # Then the rolled-back ones go, and the last good ones (1 included) stay for 'rollback --to'
    assert sorted(removed) == ["r-4.0.0", "r-5.0.0"]
    assert [r.name for r in store.releases()] == ["r-1.0.0", "r-2.0.0", "r-3.0.0"]


def test_a_relative_signing_key_is_read_from_the_config_files_folder(tmp_path: Path) -> None:
    settings = OTASettings.from_mapping({"signing_key": "keys/ota.pem"})
    config_file = tmp_path / "etc" / "hive.toml"
    assert settings.signing_key_path({"HIVE_CONFIG": str(config_file)}) == tmp_path / "etc" / "keys" / "ota.pem"
    assert OTASettings.from_mapping({"signing_key": "/abs/k.pem"}).signing_key_path({}) == Path("/abs/k.pem")
