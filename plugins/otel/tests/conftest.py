"""Fixtures: this process's spans, in the SDK's in-memory exporter, and spore processes exporting theirs to a file.

hive's own fixtures (``hive_config``, ``hive``, ``spore_processes``...) come from the ``hive_framework.testing``
pytest plugin, which hive-framework registers through its pytest11 entry point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive, HiveConfig
from hive_framework.testing import async_wait_until
from hypothesis import settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_helpers import APP, SPANS_ENV, TESTS_DIR

# Property tests run on shared, sometimes busy machines: a slow example is not a failure, so no deadline.
settings.register_profile("hive-plugin-otel", deadline=None)
settings.load_profile("hive-plugin-otel")

#: This process's spans. The global provider can be set once per process, so it is set here, at import.
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter of this process, emptied before and after the test."""
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture
def hive_config(hive_config: HiveConfig) -> HiveConfig:
    """hive's fixture, with the test app loaded by the in-test client too (so it knows the task types' options)."""
    return hive_config.evolve(apps=(APP,))


@pytest.fixture
def traced_spore(spore_processes: Any, hive: Hive, tmp_path: Path) -> Callable[..., Awaitable[Path]]:
    """``path = await traced_spore()``: one spore process running the test app, online, exporting spans to ``path``
    (``env``: more of the spore's environment)."""

    async def start(env: dict[str, str] | None = None) -> Path:
        path = tmp_path / "spore-spans.jsonl"
        spore = spore_processes("otel-spore",
                                extra_env={"PYTHONPATH": str(TESTS_DIR), SPANS_ENV: str(path), **(env or {})})

        async def online() -> bool:
            if spore.proc.poll() is not None:
                raise AssertionError(f"the spore process exited {spore.proc.returncode}:\n{spore.log()}")
            return len(await hive.nodes()) >= 1

        await async_wait_until(online, timeout=30, what="the spore process online")
        return path

    return start
