"""The plugin's settings: the ``[plugins.ota]`` table of the hive's config, checked key by key.

No ``HIVE_*`` environment names are added (hive refuses unknown ones): put these keys in ``hive.toml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs
from hive_framework import HiveConfig, positive, read_plugin_settings

PLUGIN_NAME = "ota"
DISTRIBUTION = "hive-plugin-ota"
MiB = 1024 * 1024


def plugin_version() -> str:
    """The installed distribution's version ("0+unknown" when run from a source tree that is not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.strip()


def _args(value: Any) -> tuple[str, ...]:
    # Command-line arguments as written: a list only (no comma splitting, no stripping).
    if not isinstance(value, list | tuple) or not all(isinstance(i, str) for i in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


@attrs.frozen(kw_only=True)
class OTASettings:
    """How a hive builds, ships and installs updates. Every field is a key of ``[plugins.ota]``."""

    #: Ed25519 public keys (base64 of the 32 raw bytes, as ``hive ota keygen`` prints them) a spore trusts.
    trusted_keys: tuple[str, ...] = ()
    #: Private key file (PEM) that ``hive ota build|publish --force|rollback`` sign with. A relative path is
    #: relative to the folder of the config file (``$HIVE_CONFIG``, else ``./hive.toml``), not the working one.
    signing_key: str = attrs.field(default="", converter=_path)
    #: A spore's OTA folder (releases, ``current`` pointer, trust state); default: ``<state_dir>/ota``.
    root: str = attrs.field(default="", converter=_path)
    #: Where ``hive ota build`` keeps packages; default: ``<root>/packages``.
    package_dir: str = attrs.field(default="", converter=_path)
    #: Largest package (zip) stored in Redis or downloaded.
    max_package_bytes: int = attrs.field(default=64 * MiB, validator=positive)
    #: Size of one Redis chunk of a published package.
    chunk_bytes: int = attrs.field(default=256 * 1024, validator=positive)
    #: Most members a package may have.
    max_members: int = attrs.field(default=5000, validator=positive)
    #: Most bytes a package may unpack to.
    max_total_bytes: int = attrs.field(default=256 * MiB, validator=positive)
    #: Highest compression ratio of one member (zip-bomb guard; members under 64 KiB are exempt).
    max_ratio: float = attrs.field(default=200.0, validator=positive)
    #: Seconds a restarted spore has to heartbeat and pass the health probe before it is rolled back.
    health_window: float = attrs.field(default=60.0, validator=positive)
    #: Default lifetime of a built package's manifest, seconds (30 days).
    manifest_ttl: float = attrs.field(default=30 * 86400.0, validator=positive)
    #: Lifetime of a signed operator command (forced downgrade, rollback), seconds.
    authorization_ttl: float = attrs.field(default=600.0, validator=positive)
    #: Extra ``pip install`` arguments for release requirements (``["--no-index", "--find-links", "/wheels"]``).
    pip_args: tuple[str, ...] = attrs.field(default=(), converter=_args)
    #: Seconds ``pip install`` may take.
    pip_timeout: float = attrs.field(default=600.0, validator=positive)
    #: Release folders a spore keeps (the current and previous ones always stay).
    keep_releases: int = attrs.field(default=3, validator=positive)

    @classmethod
    def from_config(cls, config: HiveConfig) -> OTASettings:
        """The settings in ``config``'s ``[plugins.ota]`` section; a bad key or value is a :class:`ConfigError`."""
        return config.plugin_settings(PLUGIN_NAME, cls)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> OTASettings:
        """The settings in a ``[plugins.ota]`` table given as a mapping (checked like :meth:`from_config`)."""
        return read_plugin_settings(PLUGIN_NAME, section, cls)

    # --- derived paths -----------------------------------------------------------------------------------

    def signing_key_path(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """``signing_key`` as a path: a relative one is taken from the config file's folder."""
        if not self.signing_key:
            return None
        path = Path(self.signing_key).expanduser()
        if path.is_absolute():
            return path
        config_file = (os.environ if environ is None else environ).get("HIVE_CONFIG")
        return (Path(config_file).expanduser().resolve().parent if config_file else Path.cwd()) / path

    def root_dir(self, config: HiveConfig) -> Path:
        if self.root:
            return Path(self.root).expanduser()
        base = Path(config.state_dir) if config.state_dir else Path.home() / ".local" / "state" / "hive-framework"
        return base / "ota"

    def packages_dir(self, config: HiveConfig) -> Path:
        return Path(self.package_dir).expanduser() if self.package_dir else self.root_dir(config) / "packages"
