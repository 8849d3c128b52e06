"""The plugin's settings: the ``[plugins.scrape]`` table of the hive's config, checked key by key."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
from hive_framework import HiveConfig, non_negative, positive, read_plugin_settings

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


def _user_agent(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _host_list(inst: Any, attribute: attrs.Attribute[Any], hosts: tuple[str, ...]) -> None:
    for host in hosts:
        if any(c.isspace() or c in "/@:" for c in host) and _as_network(host) is None:
            raise ValueError(f"{host!r} is neither a host name nor an IP address or network")


@attrs.frozen(kw_only=True)
class ScrapeSettings:
    """How a spore fetches pages. Every field is a key of ``[plugins.scrape]`` in ``hive.toml``."""

    user_agent: str = attrs.field(default=DEFAULT_USER_AGENT, converter=_user_agent)
    connect_timeout: float = attrs.field(default=5.0, validator=positive)
    read_timeout: float = attrs.field(default=10.0, validator=positive)
    total_timeout: float = attrs.field(default=30.0, validator=positive)
    max_redirects: int = attrs.field(default=5, validator=non_negative)
    max_bytes: int = attrs.field(default=2_000_000, validator=positive)
    per_host_concurrency: int = attrs.field(default=2, validator=positive)
    politeness_delay: float = attrs.field(default=1.0, validator=non_negative)
    max_retry_after: float = attrs.field(default=120.0, validator=non_negative)
    allow_hosts: tuple[str, ...] = attrs.field(default=(), validator=_host_list)
    cache_ttl: float = attrs.field(default=86_400.0, validator=non_negative)

    @classmethod
    def from_config(cls, config: HiveConfig) -> ScrapeSettings:
        """The settings in ``config``'s ``[plugins.scrape]`` section; a bad key or value is a :class:`ConfigError`."""
        return config.plugin_settings(PLUGIN_NAME, cls)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> ScrapeSettings:
        """The settings in a ``[plugins.scrape]`` table given as a mapping (checked like :meth:`from_config`)."""
        return read_plugin_settings(PLUGIN_NAME, section, cls)

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
