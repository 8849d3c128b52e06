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

    from .broker.engine import Engine
    from .config import HiveConfig
    from .models import BroadcastMessage, NodeInfo, TaskMessage
    from .tasks import BroadcastContext, TaskContext, TaskType

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


@hookspec
def create_engine(config: HiveConfig) -> Engine | None:
    """Build the queueing engine under :class:`~hive_framework.MessageBroker`: how a task's job is queued,
    taken by a spore, settled, handed back and recovered (:class:`~hive_framework.broker.Engine`).

    Only the plugin that ``HIVE_BROKER`` names is called (built in: ``streams``, the default, and
    ``arq``), so the engine is chosen by configuration, never by registration order. A third-party engine
    is a plugin implementing this hook under its own name; ``hive_framework.testing.engine_contract``
    holds the tests every engine must pass.

    :param config: the hive's settings.
    :return: a new :class:`~hive_framework.broker.Engine` (one per broker).
    Runs everywhere a broker is built (client, spore, nexus).
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
# Life cycle: around every enqueue (client) and every attempt (spore), for metrics, tracing, error reports
#
# Every impl is called, in pluggy's order, each on its own: one that raises is logged and the others still
# run, and the task goes on as if no hook were there. ``async def`` impls are awaited. Wrappers are refused.
# --------------------------------------------------------------------------------------------------


@hookspec
def before_enqueue(task: TaskMessage, config: HiveConfig) -> Awaitable[None] | None:
    """Look at a task about to be enqueued, and add text metadata to ``task.headers`` (e.g. a trace context).

    Only ``task.headers`` may be changed: the task is validated already, and other changes are undefined.
    Entries that are not text to text are dropped with a warning; headers grown past 8 KiB are put back.

    :param task: the validated task (status pending), not yet written.
    :param config: the hive's settings.
    Runs in the process that enqueues (client, nexus, spore), once per task, before anything is written.
    """


@hookspec
def before_task(task: TaskMessage, node_id: str) -> Awaitable[None] | None:
    """An attempt of ``task`` is about to run on this spore (marked running and saved, attempt counted).

    Exactly one of ``after_task``, ``on_retry`` or ``on_task_failure`` follows, unless the spore stops
    and hands the unfinished attempt back to the queue. Treat ``task`` as read-only.

    :param task: the task, status running.
    :param node_id: the spore running it.
    Runs on a spore, on its event loop, in the asyncio task that then runs the handler.
    """


@hookspec
def after_task(task: TaskMessage, result: Any, node_id: str) -> Awaitable[None] | None:
    """An attempt of ``task`` completed and its result was recorded (or dropped: the task was cancelled meanwhile,
    and ``task.status`` is then cancelled).

    :param task: the task, status completed (``task.completed_at`` and ``task.started_at`` time the attempt).
    :param result: the handler's result.
    :param node_id: the spore that ran it.
    Runs on a spore, after the outcome is written.
    """


@hookspec
def on_retry(task: TaskMessage, error: str, exception: BaseException | None, delay: float,
             node_id: str) -> Awaitable[None] | None:
    """An attempt of ``task`` failed and the task was scheduled to run again in ``delay`` seconds.

    :param task: the task, status retrying, ``task.attempt`` the attempt that failed.
    :param error: the error as recorded (``Type: message``).
    :param exception: what the handler raised (a ``TimeoutError`` for a timeout).
    :param delay: seconds until the next attempt may start.
    :param node_id: the spore that ran it.
    Runs on a spore, after the retry is written.
    """


@hookspec
def on_task_failure(task: TaskMessage, error: str, exception: BaseException | None,
                    node_id: str) -> Awaitable[None] | None:
    """``task`` failed for good on this spore: its last attempt failed, or it is out of attempts.

    Also called, with ``exception`` ``None`` and no ``before_task`` before it, for a task the spore
    fails at once because the spores that ran it before kept dying; and when a cancellation won over
    the failed attempt (then ``task.status`` is ``cancelled``: the failure was dropped).

    :param task: the task as this spore recorded it, status failed.
    :param error: the error as recorded.
    :param exception: what the handler raised, or ``None`` when nothing ran.
    :param node_id: the spore that gave up on it.
    Runs on a spore, after the failure is written.
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
def on_broadcast(message: BroadcastMessage, context: BroadcastContext) -> Awaitable[Any] | str | None:
    """React to a broadcast command. Every impl is called; ``async def`` is allowed here.

    An impl that raises is logged and the others still run. A string returned (or awaited) is sent
    back to the sender as the reply detail for ``PING``-like commands.

    :param message: the decoded :class:`~hive_framework.models.BroadcastMessage`.
    :param context: the receiving spore, as a :class:`~hive_framework.tasks.BroadcastContext` (node id and
        name, kernel, config, broker, log, and ``pause()``, ``resume()``, ``request_stop()``).
    Runs on every spore the message targets.
    """


@hookspec(firstresult=True)
def apply_update(package: Any, context: BroadcastContext) -> Awaitable[Any] | None:
    """Install an update package on this spore (the OTA plugin implements it).

    :param package: the update description received with ``UPDATE_SYSTEM``.
    :param context: the receiving spore, as a :class:`~hive_framework.tasks.BroadcastContext`.
    :return: ``None`` when this plugin cannot apply it, else an awaitable of the outcome.
    Runs on a spore. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------
# Scaling: in the process that runs the local autoscaler (``hive up --autoscale MIN:MAX``)
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def autoscale_decision(state: Any, config: HiveConfig) -> int | None:
    """Choose how many spores the local autoscaler should run now; ``None`` leaves it to the default policy.

    The default (:func:`hive_framework.autoscale.default_policy`) grows when the backlog per spore or the
    oldest task's wait passes its threshold and shrinks, one idle spore at a time, after the cool-down.

    :param state: an :class:`hive_framework.autoscale.ScaleState`: backlog, running spores and how long
        each has been idle, the MIN/MAX bounds and the thresholds.
    :param config: the hive's settings.
    :return: the wanted number of spores (clamped to MIN..MAX by the caller), or ``None``.
    Runs in the autoscaler's process, once per tick. Stops at the first non-None result.
    """
