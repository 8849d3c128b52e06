"""The ``hive`` command line. A user mistake prints one clear line and exits non-zero, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from . import __version__, wire
from .config import HiveConfig
from .errors import ConfigError, HiveError
from .kernel import Kernel

T = TypeVar("T")


class HiveGroup(click.Group):
    """Turns every :class:`HiveError` into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HiveError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None


class State:
    """What the root options set; the kernel is built on first use."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._kernel: Kernel | None = None

    def config(self, **more: Any) -> HiveConfig:
        return HiveConfig.load(**{**self.overrides, **more})

    def kernel(self, **more: Any) -> Kernel:
        if self._kernel is None or more:
            self._kernel = Kernel(self.config(**more))
        return self._kernel


pass_state = click.make_pass_decorator(State)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _json_arg(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.ClickException(
            f"{what} must be a JSON object, like '{{\"url\": \"https://...\"}}', got {type(value).__name__}"
        )
    return value


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("arq").setLevel(logging.WARNING)


@click.group(cls=HiveGroup)
@click.version_option(__version__, prog_name="hive")
@click.option("--redis-url", envvar=None, help="Redis URL (overrides REDIS_URL and REDIS_HOST/PORT).")
@click.option("--app", "apps", multiple=True, help="Module with task types to load (repeatable).")
@click.option("--config", "toml_file", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.pass_context
def cli(
    ctx: click.Context, redis_url: str | None, apps: tuple[str, ...], toml_file: str | None, log_level: str
) -> None:
    """hive-framework: run spores, submit tasks and watch the cluster."""
    overrides: dict[str, Any] = {}
    if redis_url:
        overrides["redis_url"] = redis_url
    if toml_file:
        overrides["toml_file"] = toml_file
        # Processes this one starts (spores, a nexus) read the same file.
        os.environ["HIVE_CONFIG"] = os.path.abspath(toml_file)
    if apps:
        overrides["apps"] = apps
    _setup_logging(log_level)
    state = State(overrides)
    try:
        config = state.config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not config.enable_hive and ctx.invoked_subcommand not in (None, "plugins"):
        raise click.ClickException("the hive is disabled (ENABLE_HIVE=false)")
    ctx.obj = state


@cli.command()
@click.option("--name", help="Node name (also its id); default: host name and pid.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Tasks run at once (HIVE_CONCURRENCY).")
@click.option("--app", "apps", multiple=True, help="Module with task types to load (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Capability tag this node offers (repeatable).")
@click.option("--capability", "capability_args", multiple=True, metavar="KEY=VALUE",
              help="Capability this node declares, VALUE as JSON (gpu=true, vram_gb=24); repeatable.")
@pass_state
def spore(
    state: State, name: str | None, concurrency: int | None, apps: tuple[str, ...], tags: tuple[str, ...],
    capability_args: tuple[str, ...] = (),
) -> None:
    """Run a worker node until SIGTERM, Ctrl-C or a SHUTDOWN broadcast."""
    from .spore import Spore

    capabilities: dict[str, Any] = {}
    for item in capability_args:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--capability")
        try:
            capabilities[key.strip()] = json.loads(raw)
        except ValueError:
            capabilities[key.strip()] = raw  # a bare word is a string: --capability zone=eu-west
    if tags:
        capabilities["tags"] = [*capabilities.get("tags", []), *tags]
    extra = {"apps": (*state.config().apps, *apps)} if apps else {}
    kernel = state.kernel(**extra)
    node = Spore(kernel, name=name, concurrency=concurrency, capabilities=capabilities or None)
    _run(node.run())
    stuck = [t for t in threading.enumerate() if t.name.startswith("hive-task") and t.is_alive()]
    if stuck:
        # A sync handler is still blocked past its timeout; its task was already failed or handed back,
        # so exit now rather than wait for the thread at interpreter shutdown.
        logging.getLogger("hive").warning("exiting with %d sync handler(s) still blocked", len(stuck))
        logging.shutdown()
        os._exit(0)


@cli.command()
@click.argument("task_type")
@click.option("--payload", "-p", help="JSON object passed to the task.")
@click.option("--priority", help="high_priority, background or 0-10.")
@click.option("--task-id", help="Use this id (must be new).")
@click.option("--timeout", type=float, help="Task timeout in seconds.")
@click.option("--max-retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--wait", is_flag=True, help="Wait for the task and print it.")
@click.option("--wait-timeout", type=float, default=None, help="Give up waiting after this many seconds.")
@pass_state
def submit(
    state: State,
    task_type: str,
    payload: str | None,
    priority: str | None,
    task_id: str | None,
    timeout: float | None,
    max_retries: int | None,
    wait: bool,
    wait_timeout: float | None,
) -> None:
    """Enqueue a task of TASK_TYPE and print its id (or, with --wait, the finished task)."""
    data = _json_arg(payload, "--payload")

    async def go() -> None:
        async with state.kernel().create_broker() as broker:
            new_id = await broker.enqueue_task(
                task_type, data, priority, task_id, timeout=timeout, max_retries=max_retries
            )
            if not wait:
                click.echo(new_id)
                return
            message = await broker.wait_for_task(new_id, wait_timeout)
            _echo_json(wire.to_plain(message))
            if message.status.value != "completed":
                sys.exit(1)

    _run(go())


@cli.command("task")
@click.argument("task_id")
@pass_state
def task_cmd(state: State, task_id: str) -> None:
    """Print one task's status, result and error as JSON."""

    async def go() -> None:
        async with state.kernel().create_broker() as broker:
            message = await broker.get_task_status(task_id)
        if message is None:
            raise click.ClickException(f"no task with id {task_id!r} (unknown, or expired after HIVE_RESULT_TTL)")
        _echo_json(wire.to_plain(message))

    _run(go())


@cli.command()
@pass_state
def queues(state: State) -> None:
    """Print queue lengths and task counts for the whole cluster as JSON."""

    async def go() -> None:
        async with state.kernel().create_broker() as broker:
            stats: dict[str, Any] = dict(await broker.get_queue_stats())
            stats["nodes_online"] = len(await broker.get_nodes())
        _echo_json(stats)

    _run(go())


@cli.command()
@pass_state
def nodes(state: State) -> None:
    """Print the online spores and their last heartbeat as JSON."""

    async def go() -> None:
        async with state.kernel().create_broker() as broker:
            _echo_json([wire.to_plain(n) for n in await broker.get_nodes()])

    _run(go())


@cli.command()
@click.argument("command")
@click.option("--data", help="JSON object sent with the command.")
@click.option("--node", "targets", multiple=True, help="Only this node (repeatable); default: all.")
@click.option("--wait-replies", type=float, default=2.0, show_default=True, help="Seconds to collect replies.")
@pass_state
def broadcast(state: State, command: str, data: str | None, targets: tuple[str, ...], wait_replies: float) -> None:
    """Send COMMAND (PING, PAUSE, RESUME, SHUTDOWN or a plugin's) to the spores and print their replies."""
    payload = _json_arg(data, "--data")

    async def go() -> None:
        async with state.kernel().create_broker() as broker:
            online = await broker.get_nodes()
            expected = len([n for n in online if not targets or {n.node_id, n.node_name} & set(targets)])
            message_id = await broker.broadcast_control(command, payload, list(targets))
            replies = await broker.collect_replies(message_id, expected=expected, timeout=wait_replies)
        _echo_json({"message_id": message_id, "expected": expected, "replies": [wire.to_plain(r) for r in replies]})

    _run(go())


@cli.command()
@click.option("--monitor-address", help="Address the Hive Monitor listens on (HIVE_MONITOR_ADDRESS).")
@click.option("--monitor-port", type=click.IntRange(1, 65535), help="Port of the Hive Monitor (HIVE_MONITOR_PORT).")
@click.option("--no-monitor", is_flag=True, help="Do not serve the Hive Monitor dashboard (HIVE_MONITOR=false).")
@pass_state
def nexus(state: State, monitor_address: str | None, monitor_port: int | None, no_monitor: bool) -> None:
    """Run the master: Foreman's cluster view, the watchdog (zombies, stranded tasks, dead letters) and the
    Hive Monitor dashboard."""
    from .nexus import Nexus

    overrides: dict[str, Any] = {}
    if monitor_address:
        overrides["monitor_address"] = monitor_address
    if monitor_port:
        overrides["monitor_port"] = monitor_port
    if no_monitor:
        overrides["monitor"] = False
    _run(Nexus(state.kernel(**overrides)).run())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """Show the cluster: nodes (online and lost), their load, and the queues."""
    from .default_plugins.foreman import ForemanAgent

    async def go() -> dict[str, Any]:
        async with state.kernel().create_broker() as broker:
            foreman = ForemanAgent(broker)
            await foreman.refresh()
            cluster = foreman.get_cluster_status()
            cluster["queues"] = await broker.get_queue_stats()
            return cluster

    cluster = _run(go())
    if as_json:
        _echo_json(cluster)
        return
    click.echo(
        f"nodes {cluster['online_nodes']}/{cluster['total_nodes']} online   avg cpu {cluster['avg_cpu_usage']}%   "
        f"avg mem {cluster['avg_memory_usage']}%   active tasks {cluster['total_active_tasks']}"
    )
    click.echo(f"{'node':<28} {'state':<8} {'cpu%':>6} {'mem%':>6} {'tasks':>5} {'load':>7}  capabilities")
    for n in cluster["nodes"]:
        state_label = ("paused" if n["paused"] else "online") if n["is_online"] else "OFFLINE"
        caps = {k: v for k, v in n["capabilities"].items() if v and k not in ("free_memory_mb", "cpu_count")}
        click.echo(f"{n['node_name']:<28.28} {state_label:<8} {n['cpu_usage']:>6.1f} {n['memory_usage']:>6.1f} "
                   f"{n['active_tasks']:>5} {n['load_score']:>7.2f}  {json.dumps(caps)}")
    click.echo("queues: " + ", ".join(f"{k}={v}" for k, v in cluster["queues"].items()))


@cli.command()
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def dead(state: State, limit: int, as_json: bool) -> None:
    """List the dead-letter tasks: failed for good, after their retries."""

    async def go() -> list[Any]:
        async with state.kernel().create_broker() as broker:
            return list(await broker.dead_letters(limit))

    letters = _run(go())
    if as_json:
        _echo_json([wire.to_plain(m) for m in letters])
        return
    if not letters:
        click.echo("no dead letters")
    for m in letters:
        click.echo(f"{m.task_id}  {m.task_type:<20.20} attempts {m.attempt}  {m.error}")


@cli.command()
@click.argument("task_ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead-letter task.")
@pass_state
def retry(state: State, task_ids: tuple[str, ...], all_dead: bool) -> None:
    """Run failed (or stuck) tasks again from scratch, under fresh engine jobs."""
    if not task_ids and not all_dead:
        raise click.UsageError("name TASK_ID(s) or pass --all-dead")

    async def go() -> list[tuple[str, bool]]:
        async with state.kernel().create_broker() as broker:
            ids = list(task_ids)
            if all_dead:
                ids += [m.task_id for m in await broker.dead_letters(limit=100_000)]
            return [(t, await broker.retry_task(t)) for t in ids]

    outcome = _run(go())
    for task_id, ok in outcome:
        click.echo(f"{task_id}  {'requeued' if ok else 'not retried (unknown or already completed)'}")
    if any(not ok for _, ok in outcome):
        sys.exit(1)


def read_items(stream: Any) -> list[Any]:
    """Items from a JSON array, or one per line (a JSON value, or else the line as a string)."""
    text = stream.read()
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise click.BadParameter(f"not a valid JSON array: {exc}", param_hint="FILE") from None
        return list(items)
    items = []
    for line in stripped.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            items.append(json.loads(line))
        except ValueError:
            items.append(line)
    return items


@cli.command("map")
@click.argument("task_type")
@click.argument("source", type=click.File("r"), metavar="FILE|-")
@click.option("--priority", help="high_priority, background or 0-10.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1, show_default=True, help="Items per task.")
@click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds.")
@click.option("--reducer", help="Reduce the results with this reducer (collect, sum, count, merge...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def map_cmd(
    state: State, task_type: str, source: Any, priority: str | None, chunk_size: int, timeout: float | None,
    reducer: str | None, as_json: bool,
) -> None:
    """Run TASK_TYPE once per item of FILE (a JSON array or one item per line; - for stdin)."""
    from .jobs import MapJob

    items = read_items(source)
    if not items:
        raise click.ClickException("no items to map (the input is empty)")

    async def go() -> list[Any]:
        kernel = state.kernel()
        async with kernel.create_broker() as broker:
            job = MapJob(broker, task_type, items, chunk_size=chunk_size, priority=priority)
            await job.submit()
            failed = 0
            with click.progressbar(length=len(items), label=f"{task_type}", file=sys.stderr, show_pos=True,
                                   show_eta=True, item_show_func=lambda s: s) as bar:
                async for outcome in job.stream(timeout):
                    failed += not outcome.ok
                    rate = len(job.outcomes) / max(time.monotonic() - job.started, 1e-6)
                    bar.update(1, f"done {len(job.outcomes) - failed} failed {failed} "
                                  f"pending {len(items) - len(job.outcomes)} {rate:.1f}/s")
            outcomes = job.ordered()
            reduced = kernel.reduce(reducer, [o.result for o in outcomes if o.ok]) if reducer else None
            return [outcomes, reduced, time.monotonic() - job.started]

    outcomes, reduced, duration_s = _run(go())
    if as_json:
        from .default_plugins.mapreduce import summarize

        _echo_json({"summary": summarize(outcomes, duration_s), "results": [wire.to_plain(o) for o in outcomes],
                    "reduced": reduced})
    else:
        click.echo(f"{'#':>5}  {'status':<10} {'node':<20} result / error")
        for o in outcomes:
            shown = json.dumps(o.result, default=str) if o.ok else (o.error or "")
            click.echo(f"{o.item_index:>5}  {o.status:<10} {o.node or '-':<20.20} {shown[:100]}")
        if reducer:
            click.echo(f"reduced ({reducer}): {json.dumps(reduced, default=str)}")
    if any(not o.ok for o in outcomes):
        sys.exit(1)


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include the built-in default plugins.")
@click.option("--hook", help="Only plugins implementing this hook.")
@pass_state
def plugins(state: State, show_all: bool, hook: str | None) -> None:
    """List installed plugins as JSON: name, version, hooks and task types."""
    _echo_json(state.kernel().describe_plugins(include_defaults=show_all, hook=hook))


@cli.command()
@click.option("--spores", "-n", default=2, show_default=True, type=click.IntRange(min=0), help="Local spores to start.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Slots per spore.")
@click.option("--app", "apps", multiple=True, help="Module with task types for the spores (repeatable).")
@click.option("--embedded", type=click.Choice(["auto", "always", "redis-server", "fakeredis"]), default="auto",
              show_default=True, help="auto: use a configured or default Redis if one answers, else start one.")
@click.option("--no-nexus", is_flag=True, help="Do not start a nexus (watchdog) process.")
@click.option("--monitor-port", type=click.IntRange(1, 65535), help="Port of the nexus's Hive Monitor.")
@click.option("--no-monitor", is_flag=True, help="The nexus serves no Hive Monitor dashboard.")
@pass_state
def up(state: State, spores: int, concurrency: int | None, apps: tuple[str, ...], embedded: str,
       no_nexus: bool, monitor_port: int | None = None, no_monitor: bool = False) -> None:
    """Start Redis (if needed) and N local spores; Ctrl-C stops them all cleanly."""
    # SIGTERM (a process manager's stop) takes Ctrl-C's clean path; by default it killed only this
    # process, orphaning the spores (and, with an embedded Redis, cutting them off mid-task).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = state.config()
    if monitor_port:
        config = config.evolve(monitor_port=monitor_port)
    if no_monitor:
        config = config.evolve(monitor=False)
    # The nexus gets the monitor settings as resolved here (from --config too), the spores never the token.
    nexus_env = {k: v for k, v in config.to_env().items() if k.startswith("HIVE_MONITOR") and v}
    with LocalCluster(config, spores=spores, concurrency=concurrency, apps=apps, embedded=embedded,
                      nexus=not no_nexus, nexus_env=nexus_env) as local:
        click.echo(f"hive up: Redis is {local.redis_description}")
        click.echo(f"hive up: {spores} spore(s){'' if no_nexus else ' and a nexus'} running; "
                   f"REDIS_URL={local.safe_url}  (Ctrl-C to stop)")
        if not no_nexus and config.monitor:
            host = f"[{config.monitor_address}]" if ":" in config.monitor_address else config.monitor_address
            click.echo(f"hive up: Hive Monitor at http://{host}:{config.monitor_port}/")
        try:
            local.wait()
        except KeyboardInterrupt:
            click.echo("hive up: stopping spores...")


class LocalCluster:
    """Redis (configured or embedded) plus spore subprocesses, for ``hive up`` and the demo."""

    def __init__(
        self,
        config: HiveConfig,
        *,
        spores: int,
        concurrency: int | None = None,
        apps: tuple[str, ...] = (),
        embedded: str = "auto",
        extra_env: dict[str, str] | None = None,
        quiet: bool = False,
        nexus: bool = False,
        nexus_env: dict[str, str] | None = None,
    ) -> None:
        self.nexus = nexus
        self.nexus_env = nexus_env or {}
        self.config = config
        self.spores = spores
        self.concurrency = concurrency
        self.apps = apps
        self.embedded = embedded
        self.extra_env = extra_env or {}
        self.quiet = quiet
        self.url = ""
        self.server: Any = None
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def redis_description(self) -> str:
        if self.server is not None:
            return str(self.server.description)
        return f"the configured Redis at {self.safe_url}"

    @property
    def safe_url(self) -> str:
        from .config import mask_url

        return mask_url(self.url)

    def __enter__(self) -> LocalCluster:
        from .embedded import resolve_redis

        self.url, self.server = resolve_redis(self.config, embedded=self.embedded)
        env = {**os.environ, **self.extra_env, "REDIS_URL": self.url}
        for index in range(self.spores):
            argv = [sys.executable, "-m", "hive_framework", "--log-level", "warning" if self.quiet else "info",
                    "spore", "--name", f"local-{index + 1}-{os.getpid()}"]
            if self.concurrency:
                argv += ["--concurrency", str(self.concurrency)]
            for app in self.apps:
                argv += ["--app", app]
            self.procs.append(subprocess.Popen(argv, env=env))
        if self.nexus:
            argv = [sys.executable, "-m", "hive_framework", "--log-level", "warning" if self.quiet else "info", "nexus"]
            self.procs.append(subprocess.Popen(argv, env={**env, **self.nexus_env}))
        return self

    def wait(self) -> None:
        while any(p.poll() is None for p in self.procs) or not self.procs:
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None:
            self.server.stop()


def _register_plugin_commands() -> None:
    """Let plugins add subcommands (``register_commands``) without failing the CLI if config is broken.

    App modules are not imported here: an app that fails to import (or exists only in a release an OTA
    supervisor adds) must not take the plugins' commands away; the command that needs it reports it.
    """
    try:
        kernel = Kernel(HiveConfig.load().evolve(apps=()))
    except HiveError:
        return
    kernel.pm.hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_plugin_commands()
    from .demo import demo

    cli.add_command(demo)
    cli.main(args=argv, prog_name="hive")


def run_coro(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Decorator for plugin commands: run an async click callback with ``asyncio.run``."""

    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(func(*args, **kwargs))

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper
