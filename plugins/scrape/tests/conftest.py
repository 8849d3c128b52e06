"""Fixtures: the local web server, and a hive whose [plugins.scrape] settings admit it.

hive's own fixtures (``hive_config``, ``hive``, ``run_spore``, ``spore_processes``...) come from the
``hive_framework.testing`` pytest plugin, which hive-framework registers through its pytest11 entry point.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_framework import HiveConfig, Kernel
from hypothesis import settings

from scrape_helpers import TEST_SETTINGS, ArticleServer

# Property tests run on shared, sometimes busy machines: a slow example is not a failure, so no deadline.
settings.register_profile("hive-plugin-scrape", deadline=None)
settings.load_profile("hive-plugin-scrape")

@pytest.fixture
def server() -> Iterator[ArticleServer]:
    """The local article server, stopped after the test."""
    with ArticleServer() as running:
        yield running


@pytest.fixture
def make_servers() -> Iterator[Callable[[int], list[ArticleServer]]]:
    """``make_servers(5)``: several servers, one per "site" (each on its own port)."""
    started: list[ArticleServer] = []

    def make(count: int) -> list[ArticleServer]:
        for _ in range(count):
            started.append(ArticleServer().__enter__())
        return started[-count:]

    yield make
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture
def scrape_settings() -> dict[str, Any]:
    """The ``[plugins.scrape]`` section the test hive uses (a test may change it before ``hive_kernel`` is built)."""
    return dict(TEST_SETTINGS)


@pytest.fixture
def scrape_config(hive_config: HiveConfig, scrape_settings: dict[str, Any]) -> HiveConfig:
    return hive_config.evolve(plugins={"scrape": scrape_settings})


@pytest.fixture
def hive_kernel(scrape_config: HiveConfig) -> Kernel:
    """Overrides hive's fixture: the client and the in-process spores share the scrape settings."""
    return Kernel(scrape_config)


@pytest.fixture
def scrape_toml(tmp_path: Path, scrape_settings: dict[str, Any]) -> Path:
    """The settings as a TOML file, for spore *processes*: HiveConfig.to_env() has no [plugins.NAME] sections,
    so they get them through ``HIVE_CONFIG`` (the environment still wins for every other setting)."""
    lines = ["[plugins.scrape]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in scrape_settings.items()]
    path = tmp_path / "hive.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
