"""The plugin's settings: the ``[plugins.security_scan]`` TOML section, read by ``HiveConfig.plugin_settings``.

An unknown key or a value of the wrong type is a :class:`~hive_framework.ConfigError` naming the key, never
silently dropped. Values must have their TOML type (``"10"`` is not a number, ``"no"`` not a boolean): the
section is read with ``convert=False`` and the validators below check types. There are no environment
variables: hive refuses unknown ``HIVE_*`` names.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from hive_framework import HiveConfig

PLUGIN_NAME = "security_scan"


def _positive_int(inst: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a whole number > 0, got {value!r}")


def _positive_number(inst: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a number > 0, got {value!r}")


def _non_negative_number(inst: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _flag(inst: Any, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"exclude must be a list of gitignore-style patterns, got {value!r}")
    return tuple(value)


@attrs.frozen(kw_only=True)
class ScanSettings:
    """Limits and switches of a scan; read on the client (planning, upload) and on spores (unpacking)."""

    #: Largest shard: the total size of its files, and so of the archive stored in Redis for it.
    max_shard_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive_int)
    #: Most files in one shard (keeps each task's payload, which lists them, small).
    max_shard_files: int = attrs.field(default=500, validator=_positive_int)
    #: Larger files are not scanned (reported as skipped): generated or minified files, data dumps.
    max_file_bytes: int = attrs.field(default=2 * 1024 * 1024, validator=_positive_int)
    #: Seconds a shard archive may stay in Redis if the client dies before deleting it.
    archive_ttl: float = attrs.field(default=3600.0, validator=_positive_number)
    #: Timeout of one shard's task, seconds.
    task_timeout: float = attrs.field(default=600.0, validator=_positive_number)
    #: Shards planned per spore when ``--shards`` is not given.
    shards_per_spore: int = attrs.field(default=8, validator=_positive_int)
    #: A spore on the client's host whose files hash the same reads them in place instead of unpacking.
    read_local: bool = attrs.field(default=True, validator=_flag)
    #: Seconds a file's cached findings are kept (0 turns the cache off).
    cache_ttl: float = attrs.field(default=7 * 86400.0, validator=_non_negative_number)
    #: Folder of the cache file used when the scan's Redis is private (empty: $XDG_CACHE_HOME/hive-scan).
    cache_dir: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    #: Extra gitignore-style patterns to leave out, relative to the scanned folder.
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_patterns)

    @classmethod
    def from_config(cls, config: HiveConfig) -> ScanSettings:
        """The settings in ``config``'s ``[plugins.security_scan]`` section (defaults when it is absent)."""
        return config.plugin_settings(PLUGIN_NAME, cls, convert=False)
