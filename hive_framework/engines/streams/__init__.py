"""The ``streams`` engine (Redis Streams, the default): :mod:`.engine` has its key layout, ``lua/`` its scripts."""

from __future__ import annotations

from .engine import StreamsEngine
from .worker import GROUP, StreamWorker

__all__ = ["GROUP", "StreamWorker", "StreamsEngine"]
