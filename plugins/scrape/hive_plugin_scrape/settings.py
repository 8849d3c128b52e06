"""The plugin's settings: the ``[plugins.scrape]`` table of the hive's config, checked key by key."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
from hive_framework import ConfigError, HiveConfig

#: The plugin's name: its entry point, its config section and its Redis key segment.
PLUGIN_NAME = "scrape"
DISTRIBUTION = "hive-plugin-scrape"


def plugin_version() -> str:
    """The installed distribution's version ("0+unknown" when run from a source tree that is not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


DEFAULT_USER_AGENT = (
    f"{DISTRIBUTION}/{plugin_version()} (hive-framework article summariser; honours per-host politeness delays)"
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _positive(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ScrapeSettings:
    """How a spore fetches pages. Every field is a key of ``[plugins.scrape]`` in ``hive.toml``."""

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    read_timeout: float = attrs.field(default=10.0, validator=_positive)
    total_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_redirects: int = attrs.field(default=5, validator=_non_negative)
    max_bytes: int = attrs.field(default=2_000_000, validator=_positive)
    per_host_concurrency: int = attrs.field(default=2, validator=_positive)
    politeness_delay: float = attrs.field(default=1.0, validator=_non_negative)
    allow_hosts: tuple[str, ...] = ()
    cache_ttl: float = attrs.field(default=86_400.0, validator=_non_negative)

    @classmethod
    def from_config(cls, config: HiveConfig) -> ScrapeSettings:
        """The settings in ``config``'s ``[plugins.scrape]`` section; a bad key or value is a :class:`ConfigError`."""
        return cls.from_mapping(config.plugin_config(PLUGIN_NAME))

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> ScrapeSettings:
        fields = {f.name: f for f in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in section.items():
            field = fields.get(key)
            if field is None:
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

    # --- the allow-list ------------------------------------------------------------------------------------

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        """``allow_hosts`` entries that are addresses or networks (``127.0.0.1``, ``10.0.0.0/8``)."""
        return tuple(net for net in (_as_network(entry) for entry in self.allow_hosts) if net is not None)

    @property
    def allowed_names(self) -> tuple[str, ...]:
        """``allow_hosts`` entries that are host names (``intranet.example``, ``*.corp.example``), lower-cased."""
        return tuple(entry.lower().rstrip(".") for entry in self.allow_hosts if _as_network(entry) is None)


def _as_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


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
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {raw!r}")
    return raw.strip()


def _hosts(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of host names, addresses or networks, got {raw!r}")
    hosts = tuple(str(item).strip() for item in items if str(item).strip())
    for host in hosts:
        if any(c.isspace() or c in "/@:" for c in host) and _as_network(host) is None:
            raise ValueError(f"{host!r} is neither a host name nor an IP address or network")
    return hosts


_PARSERS: dict[str, Any] = {
    "user_agent": _text,
    "connect_timeout": _number,
    "read_timeout": _number,
    "total_timeout": _number,
    "max_redirects": _whole,
    "max_bytes": _whole,
    "per_host_concurrency": _whole,
    "politeness_delay": _number,
    "allow_hosts": _hosts,
    "cache_ttl": _number,
}
