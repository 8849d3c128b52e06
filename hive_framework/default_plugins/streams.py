"""The ``streams`` plugin: Redis Streams, the default engine (``HIVE_BROKER=streams``)."""

from __future__ import annotations

from ..config import HiveConfig
from ..engines.streams import StreamsEngine
from ..hookspecs import hookimpl


@hookimpl
def create_engine(config: HiveConfig) -> StreamsEngine:
    return StreamsEngine(config)
