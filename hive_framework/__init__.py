"""hive-framework: spores (workers) and a nexus over Redis, extended through pluggy hooks.

Importing this package runs nothing: no connection, no plugin loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .config import HiveConfig
from .errors import (
    ConfigError,
    HiveError,
    InvalidTask,
    PluginError,
    RedisUnavailable,
    TaskFailed,
    UnknownTaskType,
    WaitTimeout,
    WireError,
)
from .hookspecs import hookimpl
from .kernel import Kernel
from .models import BroadcastMessage, NodeInfo, TaskMessage, TaskStatus
from .tasks import TaskContext, TaskType, task

if TYPE_CHECKING:
    from .default_plugins.broker import MessageBroker, TaskSpec
    from .default_plugins.mapreduce import ParallelSkill
    from .hive import Hive
    from .jobs import ItemOutcome
    from .spore import Spore

__all__ = [
    "BroadcastMessage",
    "ConfigError",
    "Hive",
    "HiveConfig",
    "HiveError",
    "InvalidTask",
    "ItemOutcome",
    "Kernel",
    "MessageBroker",
    "NodeInfo",
    "ParallelSkill",
    "PluginError",
    "RedisUnavailable",
    "Spore",
    "TaskContext",
    "TaskFailed",
    "TaskMessage",
    "TaskSpec",
    "TaskStatus",
    "TaskType",
    "UnknownTaskType",
    "WaitTimeout",
    "WireError",
    "__version__",
    "hookimpl",
    "task",
]

_LAZY = {
    "MessageBroker": "hive_framework.default_plugins.broker",
    "TaskSpec": "hive_framework.default_plugins.broker",
    "Hive": "hive_framework.hive",
    "Spore": "hive_framework.spore",
    "ParallelSkill": "hive_framework.default_plugins.mapreduce",
    "ItemOutcome": "hive_framework.jobs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hive_framework' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
