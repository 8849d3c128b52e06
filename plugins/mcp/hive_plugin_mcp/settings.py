"""The plugin's settings: the ``[plugins.mcp]`` table of the hive's config, checked key by key."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
from hive_framework import HiveConfig, positive, read_plugin_settings

#: The plugin's name: its entry point and its config section.
PLUGIN_NAME = "mcp"
DISTRIBUTION = "hive-plugin-mcp"

#: Tools that only read, or that run work the way the seed's Architect does (map_reduce): on by default.
DEFAULT_TOOLS: tuple[str, ...] = (
    "map_reduce",
    "parallel_execute",
    "task_status",
    "wait",
    "cluster_status",
    "queue_stats",
    "list_task_types",
)
#: Tools that enqueue or stop single tasks, read files or fetch pages: off unless ``enable`` names them.
#: ``scan`` needs hive-plugin-security-scan, ``scrape`` hive-plugin-scrape.
OPT_IN_TOOLS: tuple[str, ...] = ("submit", "cancel", "scan", "scrape")
ALL_TOOLS = (*DEFAULT_TOOLS, *OPT_IN_TOOLS)


def plugin_version() -> str:
    """The installed distribution's version ("0+unknown" when run from a source tree that is not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def _tool_names(inst: Any, attribute: attrs.Attribute[Any], names: tuple[str, ...]) -> None:
    unknown = sorted(set(names) - set(ALL_TOOLS))
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(ALL_TOOLS)}")


def _absolute_paths(inst: Any, attribute: attrs.Attribute[Any], paths: tuple[str, ...]) -> None:
    for path in paths:
        if not os.path.isabs(os.path.expanduser(path)):
            raise ValueError(f"{path!r} is not an absolute path")


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.1``, ``::1``)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True)
class McpSettings:
    """What ``hive mcp`` offers and how. Every field is a key of ``[plugins.mcp]`` in ``hive.toml``."""

    #: Opt-in tools to turn on (``submit``, ``cancel``).
    enable: tuple[str, ...] = attrs.field(default=(), validator=_tool_names)
    #: Default tools to turn off (e.g. ``parallel_execute``).
    disable: tuple[str, ...] = attrs.field(default=(), validator=_tool_names)
    #: ``--http``: the address and port to listen on (loopback by default).
    http_address: str = "127.0.0.1"
    http_port: int = attrs.field(default=8766, validator=attrs.validators.and_(positive, attrs.validators.le(65535)))
    #: ``--http``: the bearer token every request must carry (``MCP_HIVE_TOKEN`` overrides it; never logged).
    token: str = attrs.field(default="", repr=False)
    #: Longest a tool waits for tasks (``wait``, ``map_reduce``'s ``wait_timeout``), in seconds.
    max_wait: float = attrs.field(default=600.0, validator=positive)
    #: Most items one ``map_reduce`` / ``parallel_execute`` call may fan out.
    max_items: int = attrs.field(default=10_000, validator=positive)
    #: ``scan``: the folders whose contents may be scanned (nothing outside them, symbolic links resolved).
    scan_roots: tuple[str, ...] = attrs.field(default=(), validator=_absolute_paths)

    @property
    def tools(self) -> tuple[str, ...]:
        """The tools this server offers, in a stable order."""
        return tuple(t for t in ALL_TOOLS if (t in DEFAULT_TOOLS or t in self.enable) and t not in self.disable)

    @classmethod
    def from_config(cls, config: HiveConfig) -> McpSettings:
        """The settings in ``config``'s ``[plugins.mcp]`` section; a bad key or value is a :class:`ConfigError`."""
        return config.plugin_settings(PLUGIN_NAME, cls)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> McpSettings:
        return read_plugin_settings(PLUGIN_NAME, section, cls)
