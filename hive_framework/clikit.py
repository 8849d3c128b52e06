"""The command-line kit for plugin authors: what a ``register_commands`` hook needs to add a ``hive`` subcommand.

``hive``'s root group leaves a :class:`CliState` in ``ctx.obj``; a plugin command takes it with
:data:`pass_state` (or ``click.pass_obj``), builds its kernel with ``state.kernel()``, runs an async body
with :func:`run_coro`, reads JSON options with :func:`json_arg` and prints JSON with :func:`echo_json`.
All of them are exported from ``hive_framework``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from .config import HiveConfig
from .kernel import Kernel

T = TypeVar("T")

__all__ = ["CliError", "CliState", "app_option", "echo_json", "json_arg", "pass_state", "run_coro"]


class CliError(click.ClickException):
    """One line on stderr (``Error: ...``) and a chosen exit status (see :mod:`hive_framework.errors`)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


class CliState:
    """What the root options set; the kernel is built on first use.

    A plugin command reads the root options through it (``ctx.obj``, or ``@pass_state``): ``state.config()``
    is the resolved :class:`HiveConfig` (``--redis-url``, ``--config``, every ``--app``), ``state.kernel()``
    a kernel on it.
    """

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._kernel: Kernel | None = None

    def add_apps(self, apps: tuple[str, ...]) -> None:
        """More ``--app`` modules, given after the subcommand's name (``hive submit resize --app myapp.tasks``)."""
        known = tuple(self.overrides.get("apps", ()))
        self.overrides["apps"] = (*known, *(a for a in apps if a not in known))
        self._kernel = None

    def config(self, **more: Any) -> HiveConfig:
        return HiveConfig.load(**{**self.overrides, **more})

    def kernel(self, **more: Any) -> Kernel:
        if self._kernel is None or more:
            self._kernel = Kernel(self.config(**more))
        return self._kernel


def _take_apps(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    state = ctx.find_object(CliState)
    if value and state is not None:
        state.add_apps(value)
    return value


def app_option() -> click.Option:
    """The ``--app MODULE`` option every ``hive`` subcommand accepts; it feeds the :class:`CliState`."""
    return click.Option(
        ["--app", "apps"], multiple=True, expose_value=False, callback=_take_apps,
        help="Module with task types to load (repeatable; the same as the root --app).",
    )


def share_app_option(group: click.Group) -> None:
    """Give every subcommand of ``group`` (recursively) ``--app`` unless it has its own."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            share_app_option(command)
        if not any("--app" in getattr(p, "opts", ()) for p in command.params):
            command.params.append(app_option())


#: ``@pass_state`` hands a command the :class:`CliState` of the ``hive`` group it runs under.
pass_state = click.make_pass_decorator(CliState)


def run_coro(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Decorator for plugin commands: run an async click callback with ``asyncio.run``."""

    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(func(*args, **kwargs))

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` for a command that waits: Ctrl-C always ends it, as ``KeyboardInterrupt``.

    ``asyncio.run`` turns the first SIGINT into a cancellation of the command's task only; a cancellation
    caught on the way (seen under CPU load, with the task parked in a blocking Redis read) left the command
    waiting for a second Ctrl-C. Here the first one also raises ``KeyboardInterrupt`` half a second later.
    """
    interrupted = False

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()
            loop.call_later(0.5, _raise_interrupt)

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise


def _raise_interrupt() -> None:
    raise KeyboardInterrupt  # from a loop callback it ends run_forever, whatever the task does


def json_arg(text: str | None, what: str) -> dict[str, Any]:
    """The JSON object an option such as ``--payload`` holds (``{}`` when not given); a usage error otherwise."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(
            f"{what} is not valid JSON: {exc}; write an object in single quotes, e.g. {what} '{{\"k\": 1}}'"
        ) from None
    except RecursionError:
        raise click.ClickException(f"{what} is nested too deeply to read as JSON") from None
    if not isinstance(value, dict):
        raise click.ClickException(
            f"{what} must be a JSON object, like '{{\"url\": \"https://...\"}}', got {type(value).__name__}"
        )
    return value


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (``str()`` for what JSON cannot hold)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
