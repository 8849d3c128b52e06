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
    RedisAuthFailed,
    RedisUnavailable,
    TaskFailed,
    UnknownTaskType,
    WaitTimeout,
    WireError,
)
from .hookspecs import hookimpl
from .kernel import Kernel
from .models import BroadcastMessage, InvalidProgress, NodeInfo, TaskMessage, TaskProgress, TaskStatus
from .tasks import TaskContext, TaskType, task

if TYPE_CHECKING:
    from .broker import MessageBroker, TaskSpec
    from .clikit import CliState, echo_json, json_arg, pass_state, run_coro
    from .config import non_negative, positive, read_plugin_settings
    from .foreman import ForemanAgent
    from .hive import Hive
    from .jobs import ItemOutcome, ItemProgress, MapJob
    from .parallel import ParallelSkill
    from .spore import Spore
    from .supervisor import LocalCluster, PrivateNamespace, private_namespace

__all__ = [
    "BroadcastMessage",
    "CliState",
    "ConfigError",
    "ForemanAgent",
    "Hive",
    "HiveConfig",
    "HiveError",
    "InvalidProgress",
    "InvalidTask",
    "ItemOutcome",
    "ItemProgress",
    "Kernel",
    "LocalCluster",
    "MapJob",
    "MessageBroker",
    "NodeInfo",
    "ParallelSkill",
    "PluginError",
    "PrivateNamespace",
    "RedisAuthFailed",
    "RedisUnavailable",
    "Spore",
    "TaskContext",
    "TaskFailed",
    "TaskMessage",
    "TaskProgress",
    "TaskSpec",
    "TaskStatus",
    "TaskType",
    "UnknownTaskType",
    "WaitTimeout",
    "WireError",
    "__version__",
    "echo_json",
    "hookimpl",
    "json_arg",
    "non_negative",
    "pass_state",
    "positive",
    "private_namespace",
    "read_plugin_settings",
    "run_coro",
    "task",
]

_LAZY = {
    "MessageBroker": "hive_framework.broker",
    "TaskSpec": "hive_framework.broker",
    "ForemanAgent": "hive_framework.foreman",
    "Hive": "hive_framework.hive",
    "Spore": "hive_framework.spore",
    "ParallelSkill": "hive_framework.parallel",
    "ItemOutcome": "hive_framework.jobs",
    "ItemProgress": "hive_framework.jobs",
    # The SDK for plugin authors: command-line kit, local cluster, map jobs, plugin settings.
    "CliState": "hive_framework.clikit",
    "echo_json": "hive_framework.clikit",
    "json_arg": "hive_framework.clikit",
    "pass_state": "hive_framework.clikit",
    "run_coro": "hive_framework.clikit",
    "LocalCluster": "hive_framework.supervisor",
    "PrivateNamespace": "hive_framework.supervisor",
    "private_namespace": "hive_framework.supervisor",
    "MapJob": "hive_framework.jobs",
    "read_plugin_settings": "hive_framework.config",
    "positive": "hive_framework.config",
    "non_negative": "hive_framework.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hive_framework' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
