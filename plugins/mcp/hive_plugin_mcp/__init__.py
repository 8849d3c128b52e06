"""hive-plugin-mcp: the hive as an MCP server, so AI agents call map-reduce, tasks and cluster state as tools.

Found through the ``mcp`` entry point; all it adds to hive is ``register_commands``: ``hive mcp`` (stdio) and
``hive mcp --http``. The server lives in :mod:`.server` (tools and resources), :mod:`.audit` (caller identity
and the call log), :mod:`.http` (the bearer check) and :mod:`.payloads` (payload schemas of task types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hive_framework import hookimpl

from .settings import McpSettings, plugin_version

if TYPE_CHECKING:
    import click

__version__ = plugin_version()
__all__ = ["McpSettings"]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import mcp_command

    cli.add_command(mcp_command)
