"""The hook specifications: every extension point of hive-framework, grouped by phase.

Impls are matched by name and may accept a subset of the arguments, so new arguments never break old
plugins. Hooks are always called with keyword arguments by :class:`hive_framework.kernel.Kernel`. A
*first-result* hook stops at the first impl that returns something other than ``None``; never write
an ``async def`` impl for one (its coroutine is never ``None``, so it would always win): return
``None`` or an awaitable from a plain ``def`` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .config import HiveConfig
    from .default_plugins.broker import MessageBroker
    from .kernel import Kernel
    from .models import BroadcastMessage, NodeInfo, TaskMessage
    from .tasks import TaskContext, TaskType

PROJECT = "hive_framework"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------------
# Registration: called once when a kernel is built (nexus, spore and client alike)
# --------------------------------------------------------------------------------------------------


@hookspec
def register_task_types(register: Callable[[TaskType], None], config: HiveConfig) -> None:
    """Offer task types by calling ``register(task_type)`` for each.

    Task types defined with :func:`hive_framework.task` at module level in a plugin or ``--app`` module
    are found without this hook; use it for types built at run time.

    :param register: adds one :class:`~hive_framework.tasks.TaskType`; a duplicate name is an error.
    :param config: the hive's settings.
    Runs everywhere a kernel is built.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``hive`` command line.

    :param cli: the root ``click`` group.
    Runs in the ``hive`` CLI process only.
    """


@hookspec(firstresult=True)
def create_broker(kernel: Kernel) -> MessageBroker | None:
    """Build the broker: the engine that stores tasks, queues them and feeds spores.

    The default (``broker`` plugin, Redis + ARQ) is ``trylast``; a plugin that ships another engine
    returns an object with the same public methods as :class:`~hive_framework.MessageBroker`.

    :param kernel: the kernel the broker serves (config, hooks, task types).
    Runs everywhere a broker is needed. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------
# Routing: on the nexus or client, before a task is enqueued
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def route_task(task: TaskMessage, nodes: list[NodeInfo], config: HiveConfig) -> str | None:
    """Pick the node that should run ``task``, or return ``None`` to leave it on the shared queues.

    Routers are pure and synchronous: ``nodes`` is a snapshot of the online spores taken before the
    call, so an impl does no I/O.

    :param task: the task about to be enqueued (status pending).
    :param nodes: online spores, freshest heartbeat first.
    :param config: the hive's settings.
    :return: a ``node_id`` from ``nodes`` or ``None``.
    Runs on the nexus/client. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------
# Execution: on a spore
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def execute(task: TaskMessage, context: TaskContext) -> Awaitable[Any] | None:
    """Run ``task``: return ``None`` for task types this plugin does not own, else an awaitable of the result.

    The result must be JSON data. Raise to fail the attempt (it is retried while attempts remain).
    The spore enforces the task's timeout around the awaitable.

    :param task: the task, status running, ``attempt`` already counted.
    :param context: what the task may use: its spore, the kernel, a logger, the Redis client.
    Runs on a spore. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def claim_items(description: str, items: list[Any], config: HiveConfig) -> str | None:
    """Name the task type that should process ``items`` when a map-reduce call gives none.

    The scrape plugin claims URLs, the scan plugin claims paths. Inspect, never fetch.

    :param description: the caller's description of the work (free text, may be empty).
    :param items: the items to process.
    :param config: the hive's settings.
    :return: a task type name, or ``None`` to let another plugin claim them.
    Runs where the job is started. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------
# Reduction: on the nexus/client, after a map-reduce job's items finished
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def reduce(reducer: str, results: list[Any], config: HiveConfig) -> Any:
    """Combine the results of a map-reduce job with the reducer named ``reducer``.

    :param reducer: the reducer's name (``collect``, ``sum``... or one a plugin adds).
    :param results: the items' results, in input order (failed items are left out).
    :param config: the hive's settings.
    :return: the reduced value, or ``None`` when this plugin does not know ``reducer``.
    Runs where the job was started. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------
# Control: on a spore, for each broadcast it receives
# --------------------------------------------------------------------------------------------------


@hookspec
def on_broadcast(message: BroadcastMessage, context: Any) -> Awaitable[Any] | str | None:
    """React to a broadcast command. Every impl is called; ``async def`` is allowed here.

    An impl that raises is logged and the others still run. A string returned (or awaited) is sent
    back to the sender as the reply detail for ``PING``-like commands.

    :param message: the decoded :class:`~hive_framework.models.BroadcastMessage`.
    :param context: the receiving :class:`~hive_framework.spore.Spore`.
    Runs on every spore the message targets.
    """


@hookspec(firstresult=True)
def apply_update(package: Any, context: Any) -> Awaitable[Any] | None:
    """Install an update package on this spore (the OTA plugin implements it).

    :param package: the update description received with ``UPDATE_SYSTEM``.
    :param context: the receiving :class:`~hive_framework.spore.Spore`.
    :return: ``None`` when this plugin cannot apply it, else an awaitable of the outcome.
    Runs on a spore. Stops at the first non-None result.
    """
