"""Fixtures: spore processes running the test app, and the [plugins.mcp] settings ``hive mcp`` is started with.

hive's own fixtures (``hive_config``, ``hive``, ``spore_processes``...) come from the ``hive_framework.testing``
pytest plugin, which hive-framework registers through its pytest11 entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive, HiveConfig
from hive_framework.testing import SporeProcess, async_wait_until
from hypothesis import settings

from mcp_helpers import APP, TESTS_DIR, HttpServer, server_env, write_toml

settings.register_profile("hive-plugin-mcp", deadline=None)
settings.load_profile("hive-plugin-mcp")


@pytest.fixture
def hive_config(hive_config: HiveConfig) -> HiveConfig:
    """hive's fixture, with the test app loaded by the in-test client too (so it knows the payload schemas)."""
    return hive_config.evolve(apps=(APP,))


@pytest.fixture
def mcp_settings() -> dict[str, Any]:
    """The ``[plugins.mcp]`` section ``hive mcp`` gets (a test may change it before ``mcp_env`` is built)."""
    return {}


@pytest.fixture
def other_plugin_settings() -> dict[str, dict[str, Any]]:
    """Other ``[plugins.NAME]`` sections for the hive.toml that ``hive mcp`` and the spores read."""
    return {}


@pytest.fixture
def hive_toml(tmp_path: Path, mcp_settings: dict[str, Any], other_plugin_settings: dict[str, Any]) -> Path:
    return write_toml(tmp_path / "hive.toml", mcp_settings, **other_plugin_settings)


@pytest.fixture
def mcp_env(hive_config: HiveConfig, hive_toml: Path) -> dict[str, str]:
    return server_env(hive_config, hive_toml)


@pytest.fixture
def spores(spore_processes: Any, hive: Hive, hive_toml: Path) -> Callable[..., Any]:
    """``await spores(2)``: that many spore processes running the test app, online when it returns."""

    async def start(count: int, concurrency: int = 4, env: dict[str, str] | None = None) -> list[SporeProcess]:
        started = [
            spore_processes(f"spore-{i}", apps=(APP,), concurrency=concurrency,
                            extra_env={"PYTHONPATH": str(TESTS_DIR), "HIVE_CONFIG": str(hive_toml), **(env or {})})
            for i in range(count)
        ]

        async def online() -> bool:
            return len(await hive.nodes()) >= count

        await async_wait_until(online, timeout=30, what=f"{count} spore processes online")
        return started

    return start


@pytest.fixture
def http_server(
    hive_config: HiveConfig, mcp_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., HttpServer]]:
    """``http_server("--token", ...)``: ``hive mcp --http`` processes, stopped after the test."""
    started: list[HttpServer] = []

    def start(*args: str, token: str | None = None) -> HttpServer:
        env = dict(mcp_env)
        if token is not None:
            env["MCP_HIVE_TOKEN"] = token
        server = HttpServer(hive_config, env, tmp_path, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
