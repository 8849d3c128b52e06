"""The plugin's settings: the ``[plugins.ota]`` table of the hive's config, checked key by key.

No ``HIVE_*`` environment names are added (hive refuses unknown ones): put these keys in ``hive.toml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs
from hive_framework import ConfigError, HiveConfig

PLUGIN_NAME = "ota"
DISTRIBUTION = "hive-plugin-ota"
MiB = 1024 * 1024


def plugin_version() -> str:
    """The installed distribution's version ("0+unknown" when run from a source tree that is not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def _positive(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class OTASettings:
    """How a hive builds, ships and installs updates. Every field is a key of ``[plugins.ota]``."""

    #: Ed25519 public keys (base64 of the 32 raw bytes, as ``hive ota keygen`` prints them) a spore trusts.
    trusted_keys: tuple[str, ...] = ()
    #: Private key file (PEM) that ``hive ota build|publish --force|rollback`` sign with.
    signing_key: str = ""
    #: A spore's OTA folder (releases, ``current`` pointer, trust state); default: ``<state_dir>/ota``.
    root: str = ""
    #: Where ``hive ota build`` keeps packages; default: ``<root>/packages``.
    package_dir: str = ""
    #: Largest package (zip) stored in Redis or downloaded.
    max_package_bytes: int = attrs.field(default=64 * MiB, validator=_positive)
    #: Size of one Redis chunk of a published package.
    chunk_bytes: int = attrs.field(default=256 * 1024, validator=_positive)
    #: Most members a package may have.
    max_members: int = attrs.field(default=5000, validator=_positive)
    #: Most bytes a package may unpack to.
    max_total_bytes: int = attrs.field(default=256 * MiB, validator=_positive)
    #: Highest compression ratio of one member (zip-bomb guard; members under 64 KiB are exempt).
    max_ratio: float = attrs.field(default=200.0, validator=_positive)
    #: Seconds a restarted spore has to heartbeat and pass the health probe before it is rolled back.
    health_window: float = attrs.field(default=60.0, validator=_positive)
    #: Default lifetime of a built package's manifest, seconds (30 days).
    manifest_ttl: float = attrs.field(default=30 * 86400.0, validator=_positive)
    #: Lifetime of a signed operator command (forced downgrade, rollback), seconds.
    authorization_ttl: float = attrs.field(default=600.0, validator=_positive)
    #: Extra ``pip install`` arguments for release requirements (``["--no-index", "--find-links", "/wheels"]``).
    pip_args: tuple[str, ...] = ()
    #: Seconds ``pip install`` may take.
    pip_timeout: float = attrs.field(default=600.0, validator=_positive)
    #: Release folders a spore keeps (the current and previous ones always stay).
    keep_releases: int = attrs.field(default=3, validator=_positive)

    @classmethod
    def from_config(cls, config: HiveConfig) -> OTASettings:
        """The settings in ``config``'s ``[plugins.ota]`` section; a bad key or value is a :class:`ConfigError`."""
        return cls.from_mapping(config.plugin_config(PLUGIN_NAME))

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> OTASettings:
        fields = {f.name: f for f in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in section.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown setting {key!r} in [plugins.{PLUGIN_NAME}]; known: {', '.join(sorted(fields))}"
                )
            try:
                values[key] = _PARSERS[key](raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"bad value for {key} in [plugins.{PLUGIN_NAME}]: {exc}") from None
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad setting in [plugins.{PLUGIN_NAME}]: {exc}") from None

    # --- derived paths -----------------------------------------------------------------------------------

    def root_dir(self, config: HiveConfig) -> Path:
        if self.root:
            return Path(self.root).expanduser()
        base = Path(config.state_dir) if config.state_dir else Path.home() / ".local" / "state" / "hive-framework"
        return base / "ota"

    def packages_dir(self, config: HiveConfig) -> Path:
        return Path(self.package_dir).expanduser() if self.package_dir else self.root_dir(config) / "packages"


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"expected a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _whole(raw: Any) -> int:
    value = _number(raw)
    if not value.is_integer():
        raise ValueError(f"expected a whole number, got {raw!r}")
    return int(value)


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw.strip()


def _strings(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of strings, got {raw!r}")
    return tuple(i.strip() for i in items if i.strip())


def _args(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(i, str) for i in raw):
        raise ValueError(f"expected a list of strings, got {raw!r}")
    return tuple(raw)


_PARSERS: dict[str, Any] = {
    "trusted_keys": _strings,
    "signing_key": _text,
    "root": _text,
    "package_dir": _text,
    "max_package_bytes": _whole,
    "chunk_bytes": _whole,
    "max_members": _whole,
    "max_total_bytes": _whole,
    "max_ratio": _number,
    "health_window": _number,
    "manifest_ttl": _number,
    "authorization_ttl": _number,
    "pip_args": _args,
    "pip_timeout": _number,
    "keep_releases": _whole,
}
