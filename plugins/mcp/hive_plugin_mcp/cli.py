"""``hive mcp``: serve the hive to AI agents over MCP (stdio by default, ``--http`` for remote agents)."""

from __future__ import annotations

import getpass
import logging
import os
import sys

import click
from hive_framework import CliState, run_coro

from .audit import http_caller, stdio_caller
from .http import MCP_PATH, BearerAuth, bind, serve
from .server import build_server
from .settings import McpSettings, is_loopback

logger = logging.getLogger("hive_plugin_mcp")


@click.command("mcp")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--address", help="--http: address to listen on ([plugins.mcp] http_address; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="--http: port ([plugins.mcp] http_port; 0: any free).")
@click.option("--token", envvar="MCP_HIVE_TOKEN", show_envvar=True,
              help="--http: bearer token every request must carry ([plugins.mcp] token).")
@click.pass_obj
@run_coro
async def mcp_command(
    state: CliState, use_http: bool, address: str | None, port: int | None, token: str | None
) -> None:
    """Serve the hive as an MCP server: map_reduce, tasks and cluster state as tools for AI agents.

    Over stdio (the default) an agent host starts this command itself. With --http it listens on
    127.0.0.1 unless told otherwise; binding any other address needs a bearer token.
    """
    kernel = state.kernel()
    settings = McpSettings.from_config(kernel.config)  # a bad [plugins.mcp] section fails here, with its key
    if not use_http:
        who = f"stdio user {_user()} parent pid {os.getppid()}"
        server = build_server(kernel, settings, stdio_caller(who))
        logger.info("hive mcp: serving tools %s on stdio", ", ".join(settings.tools))
        await server.run_stdio_async()
        return
    host = address or settings.http_address
    secret = token if token is not None else settings.token
    if not is_loopback(host) and not secret:
        raise click.ClickException(
            f"refusing to listen on {host} without a bearer token: set --token, MCP_HIVE_TOKEN or "
            "[plugins.mcp] token (or listen on 127.0.0.1)"
        )
    server = build_server(kernel, settings, http_caller)
    app = BearerAuth(server.streamable_http_app(streamable_http_path=MCP_PATH, host=host), secret)
    try:
        sock = bind(host, settings.http_port if port is None else port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    # On stderr, so a supervisor (or a test) learns the real port when --port 0 picked one.
    print(f"hive mcp: serving http://{shown}:{bound_port}{MCP_PATH} "
          f"({'bearer token required' if secret else 'no token: loopback only'}); tools: {', '.join(settings.tools)}",
          file=sys.stderr, flush=True)
    await serve(app, sock)


def _user() -> str:
    """The local user running the server (the one an agent host on this machine runs as)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (some containers)
        return f"uid {os.getuid()}"
