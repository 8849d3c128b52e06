"""The kernel: owns the plugin manager, the config and the task-type registry; the only caller of ``pm.hook``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import traceback
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from .config import HiveConfig
from .errors import InvalidTask, PluginError, UnknownTaskType
from .keys import Keys
from .plugins import LIFECYCLE_HOOKS, check_plugins, make_plugin_manager, plugin_version
from .policies import node_meets
from .tasks import TaskType

if TYPE_CHECKING:
    import click
    from pluggy import HookImpl

    from .broker.engine import Engine
    from .models import BroadcastMessage, NodeInfo, TaskMessage
    from .tasks import BroadcastContext, TaskContext

logger = logging.getLogger(__name__)


class Kernel:
    """One hive's plugins, settings and task types. Build one per process role; nothing is global."""

    def __init__(
        self,
        config: HiveConfig | None = None,
        *,
        apps: Iterable[str | ModuleType] = (),
        plugins: Iterable[Any] = (),
        pm: pluggy.PluginManager | None = None,
        load_entry_points: bool = True,
    ) -> None:
        self.config = config if config is not None else HiveConfig.load()
        self.keys = Keys.from_config(self.config)
        self.pm = pm if pm is not None else make_plugin_manager(self.config, load_entry_points=load_entry_points)
        for plugin in plugins:
            self._register(plugin)
        for app in (*self.config.apps, *apps):
            self.load_app(app)
        check_plugins(self.pm)
        self.task_types: dict[str, TaskType] = {}
        self._collect_task_types()
        self._route_caller = self._router()
        self._refresh_lifecycle()

    # --- plugins and task types ---------------------------------------------------------------------

    def load_app(self, app: str | ModuleType) -> ModuleType:
        """Import a user module (``--app``) and register it as a plugin so its tasks and hooks count."""
        module = import_app(app) if isinstance(app, str) else app
        if self.pm.get_name(module) is None and not self.pm.is_registered(module):
            self._register(module, name=f"app:{module.__name__}")
        if hasattr(self, "_route_caller"):  # loaded after start-up: check it and pick up what it adds
            check_plugins(self.pm)
            self._collect_task_types()
            self._route_caller = self._router()
            self._refresh_lifecycle()
        return module

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register one more plugin (tests, embedding) and pick up its task types."""
        registered = self._register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name!r} is blocked or already registered")
        try:
            check_plugins(self.pm)
            self._collect_task_types()
            # The router reaches one balancer by excluding the others it knew of: rebuild it, or a
            # route_task impl added now would run ahead of the HIVE_BALANCER choice.
            self._route_caller = self._router()
            self._refresh_lifecycle()
        except PluginError:
            self.pm.unregister(plugin)  # a refused plugin must not stay half-registered
            self._collect_task_types()
            self._refresh_lifecycle()
            raise
        return registered

    def _register(self, plugin: Any, name: str | None = None) -> str | None:
        """``pm.register``, with pluggy's validation error (e.g. an argument the hook lacks) as :class:`PluginError`."""
        try:
            return self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            label = name or getattr(plugin, "__name__", type(plugin).__name__)
            raise PluginError(f"plugin {label!r}: {'; '.join(str(exc).splitlines())}") from exc

    def unregister_plugin(self, plugin: Any) -> None:
        self.pm.unregister(plugin)
        self._collect_task_types()
        self._route_caller = self._router()
        self._refresh_lifecycle()

    def _collect_task_types(self) -> None:
        found: dict[str, TaskType] = {}
        owners: dict[str, str] = {}

        def add(task_type: TaskType, owner: str) -> None:
            if not isinstance(task_type, TaskType):
                raise PluginError(f"plugin {owner!r} registered {task_type!r}, which is not a TaskType")
            existing = found.get(task_type.name)
            if existing is not None and existing is not task_type:
                raise PluginError(
                    f"task type {task_type.name!r} is defined twice: by {owners[task_type.name]!r} and {owner!r}"
                )
            found[task_type.name] = task_type
            owners[task_type.name] = owner

        for name, plugin in self._plugins():
            for value in _module_attrs(plugin):
                if isinstance(value, TaskType):
                    add(value, name)
        for impl in self.pm.hook.register_task_types.get_hookimpls():
            owner = impl.plugin_name

            def register(task_type: TaskType, _owner: str = owner) -> None:
                add(task_type, _owner)

            self._only(impl.plugin, "register_task_types")(register=register, config=self.config)
        self._owners = owners
        self.task_types = found

    def get_task_type(self, name: str, *, extra_known: Iterable[str] = ()) -> TaskType | None:
        """The local :class:`TaskType` for ``name``; ``None`` when only a remote spore (``extra_known``) has it.

        Raises :class:`UnknownTaskType` listing every known type when nobody has it.
        """
        task_type = self.task_types.get(name)
        if task_type is not None:
            return task_type
        remote = set(extra_known)
        if name in remote:
            return None
        raise UnknownTaskType(name, [*self.task_types, *remote])

    def _plugins(self) -> list[tuple[str, Any]]:
        """Registered ``(name, plugin)`` pairs; pluggy also lists blocked names, with ``None``, which are left out."""
        return [(name, plugin) for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self._plugins())

    def describe_plugins(self, *, include_defaults: bool = False, hook: str | None = None) -> list[dict[str, Any]]:
        """What ``hive plugins`` prints: name, version, hooks and task types of each plugin."""
        from .plugins import DEFAULT_PLUGINS

        defaults = {name for name, _ in DEFAULT_PLUGINS}
        rows = []
        for name, plugin in sorted(self._plugins(), key=lambda item: item[0]):
            if name in defaults and not include_defaults:
                continue
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            if hook and hook not in hooks:
                continue
            rows.append(
                {
                    "name": name,
                    "version": plugin_version(self.pm, plugin),
                    "hooks": hooks,
                    "task_types": sorted(t for t, owner in self._owners.items() if owner == name),
                }
            )
        return rows

    # --- hook calls -----------------------------------------------------------------------------------

    def create_engine(self) -> Engine:
        """A new engine from the ``create_engine`` impl of the plugin ``HIVE_BROKER`` names."""
        wanted = self.config.broker
        impls = [i for i in self.pm.hook.create_engine.get_hookimpls() if i.plugin_name == wanted]
        if not impls:
            installed = sorted(i.plugin_name for i in self.pm.hook.create_engine.get_hookimpls())
            raise PluginError(
                f"HIVE_BROKER names {wanted!r}, which is not an installed engine (create_engine); "
                f"installed: {', '.join(installed) or 'none'}"
            )
        built: list[Engine] = self._only(impls[0].plugin, "create_engine")(config=self.config)
        engine = built[0] if built else None
        if engine is None:
            raise PluginError(f"engine plugin {wanted!r} returned no engine")
        return engine

    def register_commands(self, cli: click.Group) -> None:
        """Let every plugin add its subcommands to the ``hive`` command line (``register_commands``)."""
        self.pm.hook.register_commands(cli=cli)

    def balancers(self) -> list[str]:
        """Names of the plugins that implement ``route_task`` (the strategies ``HIVE_BALANCER`` may name)."""
        return sorted(impl.plugin_name for impl in self.pm.hook.route_task.get_hookimpls())

    def _router(self) -> Any:
        """A ``route_task`` caller reaching only the strategy named by ``HIVE_BALANCER``."""
        wanted = self.config.balancer
        impls = self.pm.hook.route_task.get_hookimpls()
        chosen = [impl.plugin for impl in impls if impl.plugin_name == wanted]
        if not chosen:
            raise PluginError(
                f"HIVE_BALANCER names {wanted!r}, which is not an installed strategy; "
                f"installed: {', '.join(self.balancers()) or 'none'}"
            )
        return self._only(chosen[0], "route_task")

    def eligible_nodes(self, task: TaskMessage, nodes: list[NodeInfo]) -> list[NodeInfo]:
        """The nodes that may run ``task``: not paused and meeting ``task.requirements``."""
        return [n for n in nodes if not n.paused and node_meets(n, task.requirements)]

    def route(self, task: TaskMessage, nodes: list[NodeInfo]) -> str | None:
        """The node the configured strategy picks for ``task``, among eligible nodes only; ``None`` if none fits.

        Eligible: not paused, meeting ``task.requirements``. The strategy's answer is checked: a node
        outside that list is refused with :class:`PluginError` naming the strategy.
        """
        eligible = self.eligible_nodes(task, nodes)
        if not eligible:
            return None
        node: str | None = self._route_caller(task=task, nodes=eligible, config=self.config)
        if node is not None and node not in {n.node_id for n in eligible}:
            raise PluginError(
                f"balancer {self.config.balancer!r} picked {node!r}, which is not an eligible online node"
            )
        return node

    async def execute(self, task: TaskMessage, context: TaskContext) -> Any:
        """Run one task through the ``execute`` hook; an unowned type is :class:`UnknownTaskType`."""
        awaitable = self.pm.hook.execute(task=task, context=context)
        if awaitable is None:
            raise UnknownTaskType(task.task_type, list(self.task_types))
        return await awaitable

    def claim(self, description: str, items: list[Any]) -> str:
        """The task type a plugin claims for ``items`` (``claim_items``), else :class:`InvalidTask`."""
        claimed: str | None = self.pm.hook.claim_items(description=description, items=items, config=self.config)
        if claimed is None:
            raise InvalidTask(
                "no task_type given and no plugin claims these items; pass task_type=, one of: "
                + (", ".join(sorted(self.task_types)) or "none loaded")
            )
        return claimed

    def reduce(self, reducer: str, results: list[Any]) -> Any:
        value = self.pm.hook.reduce(reducer=reducer, results=results, config=self.config)
        if value is None:
            raise PluginError(f"no plugin provides the reducer {reducer!r}")
        return value

    async def broadcast(self, message: BroadcastMessage, context: BroadcastContext) -> list[str]:
        """Call every ``on_broadcast`` impl, awaiting async ones; one failing impl never stops the rest."""
        details: list[str] = []
        for impl in self.pm.hook.on_broadcast.get_hookimpls():
            try:
                outcome = self._only(impl.plugin, "on_broadcast")(message=message, context=context)
                for value in outcome:
                    if inspect.isawaitable(value):
                        value = await value
                    if isinstance(value, str) and value:
                        details.append(value)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("plugin %s failed on broadcast %s", impl.plugin_name, message.command)
        return details

    def _refresh_lifecycle(self) -> None:
        """Note the impls of each life-cycle hook, in call order, so a hook nobody implements costs one test."""
        self.lifecycle: dict[str, tuple[HookImpl, ...]] = {
            name: tuple(reversed(getattr(self.pm.hook, name).get_hookimpls())) for name in LIFECYCLE_HOOKS
        }

    async def run_lifecycle(self, hook: str, **kwargs: Any) -> None:
        """Call every impl of the life-cycle hook ``hook``; one that raises is logged and the rest still run.

        Callers test ``kernel.lifecycle[hook]`` first, to skip building the arguments when it is empty.
        """
        for impl in self.lifecycle[hook]:
            try:
                outcome = impl.function(*[kwargs[name] for name in impl.argnames])
                if inspect.isawaitable(outcome):
                    await outcome
            except asyncio.CancelledError:
                raise
            except Exception:
                task = kwargs.get("task")
                logger.exception("plugin %s failed in %s (task %s); going on without it", impl.plugin_name, hook,
                                 getattr(task, "task_id", "?"))

    def _only(self, plugin: Any, hook: str) -> Any:
        """A caller of ``hook`` that reaches ``plugin``'s impl alone (per-plugin isolation and ownership)."""
        others = [p for _, p in self.pm.list_name_plugin() if p is not plugin]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    async def apply_update(self, package: Any, context: BroadcastContext) -> Any:
        awaitable = self.pm.hook.apply_update(package=package, context=context)
        if awaitable is None:
            raise PluginError("no plugin can apply updates (install hive-plugin-ota)")
        return await awaitable


def import_app(name: str) -> ModuleType:
    """Import an ``--app`` module; any failure is one :class:`PluginError` line saying where and what to do.

    The ``hive`` command puts the current directory on ``sys.path`` first (as Celery, RQ, Dramatiq and ARQ
    do), so ``hive spore --app myapp.tasks`` works from the folder holding ``myapp/``.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise PluginError(
                f"cannot import app module {name!r}: {exc}; hive looks in the current directory "
                f"({os.getcwd()}) and on PYTHONPATH: run it from the folder that holds {missing.split('.')[0]!r} "
                "or add that folder to PYTHONPATH"
            ) from None
        raise PluginError(
            f"app module {name!r} imports {missing!r}, which is not installed{_where(exc)}: "
            f"install it (pip install ...) in this environment"
        ) from None
    except SyntaxError as exc:
        raise PluginError(
            f"app module {name!r} has a syntax error at {exc.filename}:{exc.lineno}: {exc.msg}; fix it and run again"
        ) from None
    except Exception as exc:
        raise PluginError(
            f"app module {name!r} failed while importing{_where(exc)}: {type(exc).__name__}: {exc}"
        ) from None


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE``: the deepest frame of ``exc``'s traceback outside importlib, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _module_attrs(plugin: Any) -> list[Any]:
    if isinstance(plugin, ModuleType):
        return list(vars(plugin).values())
    return [getattr(plugin, n, None) for n in dir(plugin) if not n.startswith("_")]
