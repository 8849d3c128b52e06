"""The ``arq`` plugin: ARQ's sorted-set queues as the engine (``HIVE_BROKER=arq``)."""

from __future__ import annotations

from ..config import HiveConfig
from ..engines.arq import ArqEngine
from ..hookspecs import hookimpl


@hookimpl
def create_engine(config: HiveConfig) -> ArqEngine:
    return ArqEngine(config)
