"""Kernel and plugin manager: defaults, start-up checks, allow/deny lists, broadcast isolation, task registry.

Every test builds its own kernel (no entry points, so installed plugins cannot leak in): nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import types
from typing import Any

import pluggy
import pytest

from hive_framework import (
    BroadcastMessage,
    HiveConfig,
    Kernel,
    MessageBroker,
    NodeInfo,
    PluginError,
    TaskContext,
    TaskMessage,
    TaskType,
    UnknownTaskType,
    hookimpl,
    hookspecs,
    task,
)
from hive_framework.plugins import DEFAULT_PLUGINS, FIRST_RESULT_HOOKS, make_plugin_manager

DEFAULT_NAMES = {name for name, _ in DEFAULT_PLUGINS}


def new_kernel(*plugins: Any, **settings: Any) -> Kernel:
    return Kernel(HiveConfig(**settings), plugins=plugins, load_entry_points=False)


def context_for(kernel: Kernel, message: TaskMessage) -> TaskContext:
    """A task context without Redis: enough for handlers that do not touch it."""
    return TaskContext(task=message, node_id="n1", node_name="node-1", kernel=kernel, redis=None,  # type: ignore[arg-type]
                       logger=logging.getLogger("test"))


# --- default plugins -------------------------------------------------------------------------------------


def test_default_plugins_are_registered_by_name() -> None:
    # Given a fresh kernel
    kernel = new_kernel()
    # Then each built-in plugin is registered under its name (a module, or an object in one)
    assert {"tasks", "arq", "streams", "mapreduce", "control"} <= DEFAULT_NAMES <= set(kernel.plugin_names())
    for name, path in DEFAULT_PLUGINS:
        plugin = kernel.pm.get_plugin(name)
        assert path.partition(":")[0] in (getattr(plugin, "__name__", None), type(plugin).__module__)


def test_each_kernel_has_its_own_plugin_manager() -> None:
    # Given two kernels, When a plugin is added to one
    first, second = new_kernel(), new_kernel()

    class Extra:
        @hookimpl
        def on_broadcast(self, message: BroadcastMessage) -> str:
            return "extra"

    first.register_plugin(Extra(), name="extra")
    # Then the other does not see it
    assert "extra" in first.plugin_names()
    assert "extra" not in second.plugin_names()
    assert first.pm is not second.pm


def test_every_first_result_hookspec_is_checked_for_async_impls() -> None:
    # Given the hook specifications, Then each first-result hook is in the list check_plugins guards
    pm = make_plugin_manager(HiveConfig(), load_entry_points=False)
    firstresult = {
        name for name, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller) and caller.spec and caller.spec.opts.get("firstresult")
    }
    assert firstresult == set(FIRST_RESULT_HOOKS)
    assert {"execute", "route_task", "reduce", "apply_update"} <= firstresult


# --- start-up checks: one PluginError naming the problem ------------------------------------------------


class UnknownHook:
    @hookimpl
    def on_brodcast(self, message: BroadcastMessage) -> None:  # typo of on_broadcast
        return None


def test_a_hook_that_does_not_exist_fails_at_start_up_naming_it() -> None:
    # Given a plugin implementing a misspelled hook
    # When a kernel starts with it, Then it fails naming the hook
    with pytest.raises(PluginError, match="on_brodcast"):
        new_kernel(UnknownHook())
    # And when added later by name, the error names the plugin too, and the plugin is not left behind
    kernel = new_kernel()
    with pytest.raises(PluginError, match=r"'typo'.*on_brodcast"):
        kernel.register_plugin(UnknownHook(), name="typo")
    assert "typo" not in kernel.plugin_names()


def test_an_argument_the_hook_does_not_have_is_a_plugin_error() -> None:
    class ExtraArg:
        @hookimpl
        def reduce(self, reducer: str, results: list[Any], flavour: str) -> Any:
            return None

    # Given an impl asking for an argument the hookspec lacks, Then start-up fails naming it (not pluggy's error)
    with pytest.raises(PluginError, match="flavour"):
        new_kernel(ExtraArg())


class AsyncExecute:
    @hookimpl
    async def execute(self, task: TaskMessage, context: TaskContext) -> Any:
        return None


class AsyncRoute:
    @hookimpl
    async def route_task(self, task: TaskMessage, nodes: list[NodeInfo]) -> str | None:
        return None


class AsyncReduce:
    @hookimpl
    async def reduce(self, reducer: str, results: list[Any]) -> Any:
        return None


class AsyncApplyUpdate:
    @hookimpl
    async def apply_update(self, package: Any, context: Any) -> Any:
        return None


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [(AsyncExecute, "execute"), (AsyncRoute, "route_task"), (AsyncReduce, "reduce"),
     (AsyncApplyUpdate, "apply_update")],
)
def test_async_def_on_a_first_result_hook_is_refused(plugin: type, hook: str) -> None:
    # Given an 'async def' impl of a first-result hook (its coroutine would always "win")
    kernel = new_kernel()
    # When registered, Then start-up fails naming plugin and hook, and the plugin is not kept
    with pytest.raises(PluginError, match=rf"'bad'.*{hook}.*async def"):
        kernel.register_plugin(plugin(), name="bad")
    assert "bad" not in kernel.plugin_names()
    # And the same holds when the kernel is built with it
    with pytest.raises(PluginError, match=hook):
        new_kernel(plugin())


def test_async_def_is_fine_on_a_non_first_result_hook() -> None:
    class AsyncBroadcast:
        @hookimpl
        async def on_broadcast(self, message: BroadcastMessage) -> str:
            return "ok"

    # Given an async on_broadcast impl, Then the kernel accepts it
    assert "async-ok" in new_kernel().register_plugin(AsyncBroadcast(), name="async-ok")


def test_an_impl_parameter_with_a_default_is_refused() -> None:
    class Defaulted:
        @hookimpl
        def reduce(self, reducer: str, results: list[Any], config: HiveConfig | None = None) -> Any:
            return None

    # Given an impl parameter with a default (pluggy would silently never pass it)
    # Then start-up fails naming the parameter
    with pytest.raises(PluginError, match=r"reduce parameter\(s\) config have defaults"):
        new_kernel(Defaulted())


# --- allow and deny lists ------------------------------------------------------------------------------


async def test_disable_plugins_blocks_a_default() -> None:
    # Given HIVE_DISABLE_PLUGINS naming the reducers and the control commands
    config = HiveConfig.load(environ={"HIVE_DISABLE_PLUGINS": "mapreduce, control"}, env_file="/dev/null",
                             toml_file="/dev/null")
    kernel = Kernel(config, load_entry_points=False)
    # Then they are not registered, and what they did is no longer done
    assert {"mapreduce", "control"}.isdisjoint(kernel.plugin_names())
    with pytest.raises(PluginError, match="sum"):
        kernel.reduce("sum", [1, 2])
    assert await kernel.broadcast(BroadcastMessage(command="PING"), context=None) == []
    # While a kernel without the deny list has both
    assert new_kernel().reduce("sum", [1, 2]) == 3
    assert await new_kernel().broadcast(BroadcastMessage(command="PING"), context=None) == ["pong"]


def test_disabling_the_broker_is_a_clear_error_when_one_is_needed() -> None:
    kernel = new_kernel(disable_plugins=("arq", "streams"))
    with pytest.raises(PluginError, match="create_engine"):
        MessageBroker(kernel)


def test_the_tasks_plugin_is_essential() -> None:
    # Given a deny list naming 'tasks', Then building the kernel fails saying it is essential
    with pytest.raises(PluginError, match="'tasks' is essential"):
        new_kernel(disable_plugins=("tasks",))


def test_load_plugins_naming_a_missing_plugin_is_an_error() -> None:
    # Given an allow-list naming a plugin that is not installed
    config = HiveConfig(load_plugins=("no_such_plugin_xyz",))
    # Then the error names it
    with pytest.raises(PluginError, match="no_such_plugin_xyz"):
        make_plugin_manager(config)


# --- broadcast -----------------------------------------------------------------------------------------


class Boom:
    @hookimpl
    def on_broadcast(self, message: BroadcastMessage) -> str:
        raise RuntimeError("sync boom")


class AsyncBoom:
    @hookimpl
    async def on_broadcast(self, message: BroadcastMessage) -> str:
        await asyncio.sleep(0)
        raise RuntimeError("async boom")


class Sync:
    @hookimpl
    def on_broadcast(self, message: BroadcastMessage) -> str:
        return f"sync:{message.command}"


class Async:
    @hookimpl
    async def on_broadcast(self, message: BroadcastMessage, context: Any) -> str:
        await asyncio.sleep(0)
        return f"async:{context}"


class Silent:
    @hookimpl
    def on_broadcast(self, message: BroadcastMessage) -> None:
        return None


async def test_one_failing_on_broadcast_impl_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    # Given plugins that raise (sync and async), answer (sync and async) or stay silent
    kernel = new_kernel()
    for name, plugin in [("boom", Boom()), ("sync", Sync()), ("async-boom", AsyncBoom()), ("async", Async()),
                         ("silent", Silent())]:
        kernel.register_plugin(plugin, name=name)
    # When a broadcast arrives
    with caplog.at_level(logging.ERROR, logger="hive_framework.kernel"):
        details = await kernel.broadcast(BroadcastMessage(command="PING"), context="ctx")
    # Then every answering impl answered (async ones awaited), the built-in PING included
    assert sorted(details) == ["async:ctx", "pong", "sync:PING"]
    # And each failure was logged naming its plugin
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "boom failed on broadcast PING" in logged
    assert "async-boom failed on broadcast PING" in logged


async def test_builtin_control_commands_act_on_the_context() -> None:
    # Given a stand-in spore
    class FakeSpore:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def pause(self) -> None:
            self.calls.append("pause")

        def resume(self) -> None:
            self.calls.append("resume")

        def request_stop(self) -> None:
            self.calls.append("stop")

    spore, kernel = FakeSpore(), new_kernel()
    # When PAUSE, RESUME, SHUTDOWN and an unknown command arrive
    replies = [await kernel.broadcast(BroadcastMessage(command=c), spore) for c in ("pause", "RESUME", "SHUTDOWN",
                                                                                      "NOPE")]
    # Then each known one acts and answers; the unknown one is ignored
    assert replies == [["paused"], ["resumed"], ["stopping"], []]
    assert spore.calls == ["pause", "resume", "stop"]


# --- task types ----------------------------------------------------------------------------------------


@task("kt_echo")
def kt_echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


class ModuleLike:
    """A plugin object carrying a task type as an attribute (like a module)."""

    echo = kt_echo


class Dynamic:
    @hookimpl
    def register_task_types(self, register: Any, config: HiveConfig) -> None:
        register(TaskType(name=f"dyn_{config.key_prefix}", handler=lambda payload: payload))


def test_register_task_types_hook_adds_types_built_at_run_time() -> None:
    # Given a plugin that registers a type whose name depends on config
    kernel = Kernel(HiveConfig(key_prefix="pfx"), plugins=[], load_entry_points=False)
    kernel.register_plugin(Dynamic(), name="dynamic")
    # Then the type is known and owned by that plugin
    assert "dyn_pfx" in kernel.task_types
    (row,) = kernel.describe_plugins()
    assert row["name"] == "dynamic"
    assert row["task_types"] == ["dyn_pfx"]
    assert row["hooks"] == ["register_task_types"]


def test_registering_something_that_is_not_a_task_type_is_refused() -> None:
    class NotATaskType:
        @hookimpl
        def register_task_types(self, register: Any) -> None:
            register(lambda payload: payload)

    with pytest.raises(PluginError, match="not a TaskType"):
        new_kernel(NotATaskType())


def test_duplicate_task_type_names_are_refused_naming_both_owners() -> None:
    # Given two plugins that each define a different 'dup' task type
    class First:
        dup = task("dup")(lambda payload: 1)

    class Second:
        dup = task("dup")(lambda payload: 2)

    kernel = new_kernel()
    kernel.register_plugin(First(), name="first")
    # When the second is added, Then it fails naming the type and both plugins, and is not kept
    with pytest.raises(PluginError, match=r"'dup' is defined twice.*'first'.*'second'"):
        kernel.register_plugin(Second(), name="second")
    assert "second" not in kernel.plugin_names()
    assert kernel.task_types["dup"](None) == 1


def test_the_same_task_type_reachable_from_two_plugins_is_not_a_duplicate() -> None:
    # Given one TaskType object re-exported by two plugins, Then that is one type, not a clash
    class Again:
        echo = kt_echo

    kernel = new_kernel(ModuleLike(), Again())
    assert kernel.task_types["kt_echo"] is kt_echo


def test_get_task_type_lists_known_types_when_unknown() -> None:
    # Given a kernel that knows one type
    kernel = new_kernel(ModuleLike())
    assert kernel.get_task_type("kt_echo") is kt_echo
    # When an unknown one is asked for, Then the error lists the known ones (and remote ones)
    with pytest.raises(UnknownTaskType) as info:
        kernel.get_task_type("kt_ehco", extra_known=["remote_type"])
    assert info.value.known == ["kt_echo", "remote_type"]
    assert "'kt_ehco'" in str(info.value) and "kt_echo, remote_type" in str(info.value)
    # And a type only a remote spore has is not an error, just not local
    assert kernel.get_task_type("remote_type", extra_known=["remote_type"]) is None


def test_unknown_task_type_with_nothing_loaded_says_what_to_do() -> None:
    with pytest.raises(UnknownTaskType, match="--app"):
        new_kernel().get_task_type("anything")


def test_load_app_registers_a_module_and_a_missing_one_is_a_plugin_error() -> None:
    # Given the test app module, When loaded, Then its task types are known
    kernel = new_kernel()
    kernel.load_app("tests.apps.basic")
    assert {"echo", "add", "flaky"} <= set(kernel.task_types)
    assert "app:tests.apps.basic" in kernel.plugin_names()
    # And a module that does not exist is a PluginError naming it
    with pytest.raises(PluginError, match="no_such_module_abc"):
        kernel.load_app("no_such_module_abc")


def test_an_app_loaded_after_start_up_is_checked_too() -> None:
    # Given an app module with an 'async def' execute impl, loaded into a running kernel
    app = types.ModuleType("late_app")

    async def execute(task: TaskMessage, context: TaskContext) -> Any:
        return None

    app.execute = hookimpl(execute)  # type: ignore[attr-defined]
    # Then it is refused like one given at start-up
    with pytest.raises(PluginError, match="execute is a first-result hook"):
        new_kernel().load_app(app)


def test_describe_plugins_shape() -> None:
    # Given one extra plugin next to the defaults
    kernel = new_kernel()
    kernel.register_plugin(ModuleLike(), name="extra")
    kernel.register_plugin(Sync(), name="talker")
    # Then by default only non-built-in plugins are listed, each with name, version, hooks and task types
    rows = kernel.describe_plugins()
    assert rows == [
        {"name": "extra", "version": None, "hooks": [], "task_types": ["kt_echo"]},
        {"name": "talker", "version": None, "hooks": ["on_broadcast"], "task_types": []},
    ]
    # And --all adds the built-ins, --hook filters by hook
    every = {row["name"]: row for row in kernel.describe_plugins(include_defaults=True)}
    assert DEFAULT_NAMES | {"extra", "talker"} <= set(every)
    assert "create_engine" in every["arq"]["hooks"]
    assert "reduce" in every["mapreduce"]["hooks"]
    by_hook = kernel.describe_plugins(include_defaults=True, hook="on_broadcast")
    assert [r["name"] for r in by_hook] == ["control", "talker"]


# --- execute --------------------------------------------------------------------------------------------


class Handlers:
    @task("sync_where")
    def sync_where(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        return {"thread": threading.get_ident(), "node": context.node_name, "x": payload["x"]}

    @task("async_plain")
    async def async_plain(payload: dict[str, Any]) -> int:
        await asyncio.sleep(0)
        return int(payload["x"]) * 2


async def test_execute_runs_sync_handlers_in_a_thread_and_awaits_async_ones() -> None:
    # Given a kernel with a sync handler that wants the context and an async one that does not
    kernel = new_kernel(Handlers())
    sync_task = TaskMessage(task_id="t1", task_type="sync_where", payload={"x": 1})
    async_task = TaskMessage(task_id="t2", task_type="async_plain", payload={"x": 21})
    # When executed through the execute hook
    sync_result = await kernel.execute(sync_task, context_for(kernel, sync_task))
    async_result = await kernel.execute(async_task, context_for(kernel, async_task))
    # Then the sync one ran off the event loop's thread and got the context; the async one was awaited
    assert sync_result["thread"] != threading.get_ident()
    assert sync_result["node"] == "node-1" and sync_result["x"] == 1
    assert async_result == 42


async def test_execute_of_an_unowned_type_is_unknown_task_type() -> None:
    kernel = new_kernel(Handlers())
    message = TaskMessage(task_id="t", task_type="nobody_has_it")
    with pytest.raises(UnknownTaskType, match=r"nobody_has_it.*async_plain, sync_where"):
        await kernel.execute(message, context_for(kernel, message))


async def test_a_plugin_execute_impl_wins_over_the_default() -> None:
    class Override:
        @hookimpl
        def execute(self, task: TaskMessage) -> Any:
            if task.task_type != "async_plain":
                return None

            async def run() -> str:
                return "overridden"

            return run()

    # Given a plugin that owns one task type's execution
    kernel = new_kernel(Handlers(), Override())
    message = TaskMessage(task_id="t", task_type="async_plain", payload={"x": 1})
    # Then it runs instead of the registry's handler, while other types fall through to the default
    assert await kernel.execute(message, context_for(kernel, message)) == "overridden"
    other = TaskMessage(task_id="u", task_type="sync_where", payload={"x": 3})
    assert (await kernel.execute(other, context_for(kernel, other)))["x"] == 3


def test_hookspecs_module_is_the_one_the_kernel_uses() -> None:
    # Given the kernel's plugin manager, Then it validates against hive_framework.hookspecs' project name
    assert new_kernel().pm.project_name == hookspecs.PROJECT
