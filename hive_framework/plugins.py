"""Building the plugin manager: default plugins, entry points, allow/deny lists, and the checks pluggy skips."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import re
import warnings
from typing import Any

import pluggy

from . import hookspecs
from .config import HiveConfig
from .errors import PluginError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hive_framework.plugins"

#: Built-in plugins (``module`` or ``module:object``), registered through the same ``pm.register`` as
#: third-party ones. The two engines are chosen by ``HIVE_BROKER``, the three balancers by ``HIVE_BALANCER``.
#: An object that is a class is instantiated once per plugin manager (its state belongs to one kernel).
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("tasks", "hive_framework.default_plugins.tasks"),
    ("streams", "hive_framework.default_plugins.streams"),
    ("arq", "hive_framework.default_plugins.arq"),
    ("load_score", "hive_framework.default_plugins.balancers:load_score_balancer"),
    ("least_tasks", "hive_framework.default_plugins.balancers:least_tasks_balancer"),
    ("round_robin", "hive_framework.default_plugins.balancers:round_robin_balancer"),
    ("mapreduce", "hive_framework.default_plugins.reducers"),
    ("control", "hive_framework.default_plugins.control"),
    ("counters", "hive_framework.default_plugins.counters:TaskCounters"),
)
#: Plugins without which nothing works; ``HIVE_DISABLE_PLUGINS`` cannot block them.
ESSENTIAL_PLUGINS = frozenset({"tasks"})

#: Hooks whose first non-None result wins: an ``async def`` impl there would always win.
FIRST_RESULT_HOOKS = ("route_task", "execute", "reduce", "apply_update", "claim_items", "autoscale_decision")
#: Hooks whose impls the kernel calls one by one, each failure logged and the task going on: no wrappers.
LIFECYCLE_HOOKS = ("before_enqueue", "before_task", "after_task", "on_retry", "on_task_failure")


def make_plugin_manager(config: HiveConfig, *, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh, fully loaded and checked manager for one kernel (never a module global)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in config.disable_plugins:
        if name in ESSENTIAL_PLUGINS:
            raise PluginError(f"plugin {name!r} is essential and cannot be disabled")
        pm.set_blocked(name)
    for name, path in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            module_path, _, attr = path.partition(":")
            module = importlib.import_module(module_path)
            plugin = getattr(module, attr) if attr else module
            pm.register(plugin() if isinstance(plugin, type) else plugin, name=name)
    if load_entry_points:
        _load_entry_points(pm, config)
    check_plugins(pm)
    if config.trace_plugins:
        pm.trace.root.setwriter(logger.info)
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: pluggy.PluginManager, config: HiveConfig) -> None:
    from importlib.metadata import entry_points

    reserved = {name for name, _ in DEFAULT_PLUGINS}
    available = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in available & reserved:
        warnings.warn(
            f"entry point {name!r} clashes with a built-in plugin name and is ignored; rename it",
            stacklevel=3,
        )
    wanted = sorted(available - reserved) if config.load_plugins is None else list(config.load_plugins)
    for name in wanted:
        if name not in available:
            raise PluginError(
                f"HIVE_LOAD_PLUGINS names {name!r}, which is not installed; "
                f"installed: {', '.join(sorted(available)) or 'none'}"
            )
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r}: {_did_you_mean(exc, pm)}", plugin=name) from exc
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}", plugin=name
            ) from exc


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Fail loudly, naming the plugin and hook, on the mistakes pluggy lets through."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        raise PluginError(f"plugin {name!r}: {_did_you_mean(exc, pm)}", plugin=name) from exc
    for hook_name in FIRST_RESULT_HOOKS:
        caller = getattr(pm.hook, hook_name, None)
        if caller is None:
            continue
        for impl in caller.get_hookimpls():
            if inspect.iscoroutinefunction(impl.function):
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name} is a first-result hook and must not be "
                    "'async def' (its coroutine would always win); return None or an awaitable instead"
                )
    for hook_name in LIFECYCLE_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name} is a life-cycle hook, called impl by impl, and "
                    "takes no wrapper; implement it plainly (pair before_task with after_task for around-logic)"
                )
    for caller in pm.hook.__dict__.values():
        if not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            if impl.kwargnames:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {caller.name} parameter(s) "
                    f"{', '.join(impl.kwargnames)} have defaults; pluggy never passes those, remove the defaults"
                )


def _did_you_mean(exc: pluggy.PluginValidationError, pm: pluggy.PluginManager) -> str:
    """pluggy's message, plus "did you mean 'on_broadcast'?" when it names an unknown hook close to a real one."""
    text = str(exc)
    match = re.search(r"unknown hook '([^']+)'", text)
    if match:
        hooks = [name for name, caller in vars(pm.hook).items()
                 if isinstance(caller, pluggy.HookCaller) and caller.spec is not None]
        close = difflib.get_close_matches(match.group(1), hooks, n=1)
        if close:
            text += f"; did you mean {close[0]!r}?"
    return text


def plugin_version(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """The version of the distribution that provided ``plugin``, if it came from an entry point."""
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return str(dist.version)
    return None
