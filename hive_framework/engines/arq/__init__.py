"""The ``arq`` engine (ARQ's sorted-set queues): see :mod:`.engine`; :mod:`.keyspace` moves ARQ's keys
under the hive's prefix."""

from __future__ import annotations

from .engine import ArqEngine
from .keyspace import ArqKeys
from .serial import job_deserializer, job_serializer
from .worker import RUN_FUNCTION, ArqWorker

__all__ = ["RUN_FUNCTION", "ArqEngine", "ArqKeys", "ArqWorker", "job_deserializer", "job_serializer"]
