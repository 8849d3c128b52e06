"""The ``hive`` command line. A user mistake prints one clear line and exits non-zero, never a traceback.

Longer than 500 lines on purpose: one thin click command per subcommand, each only parsing options and
calling the library (the logic lives in the modules it imports), so ``hive --help`` reads from one file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from . import __version__, wire
from .broker import MessageBroker
from .broker.specs import due_time
from .clikit import CliError, CliState, echo_json, json_arg, pass_state, run_interruptible, share_app_option
from .clikit import run_coro as run_coro  # the name plugins imported from here
from .config import HiveConfig
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ConfigError,
    HiveError,
    InvalidTask,
    PluginError,
    UnknownTaskType,
    no_such_task,
)
from .kernel import Kernel
from .redisutil import read_or_empty


class HiveGroup(click.Group):
    """Turns every :class:`HiveError` into one line on stderr and the exit status its class names
    (README, "Exit codes"); Ctrl-C is one line and 130, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HiveError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise CliError(
                "interrupted (Ctrl-C); tasks already submitted stay queued or running: "
                "'hive status' shows them, 'hive task ID' one of them",
                EXIT_INTERRUPTED,
            ) from None


#: The name plugins imported before the SDK surface existed; use ``hive_framework.CliState``.
State = CliState


def _setup_logging(level: str, log_format: str = "text") -> None:
    from .logfmt import JsonFormatter

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("arq").setLevel(logging.WARNING)


@click.group(
    cls=HiveGroup,
    epilog="Exit codes: 0 done; 1 refused or failed; 2 usage; 69 no Redis answers; 77 Redis refused the password; "
    "78 a setting, --app module or plugin cannot load; 130 Ctrl-C while waiting. 'hive doctor' checks a setup.",
)
@click.version_option(__version__, prog_name="hive")
@click.option("--redis-url", envvar=None, help="Redis URL (overrides REDIS_URL and REDIS_HOST/PORT).")
@click.option("--app", "apps", multiple=True, help="Module with task types to load (repeatable).")
@click.option("--config", "toml_file", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
    help="json: one JSON object per log line (for log shippers).",
)
@click.pass_context
def cli(
    ctx: click.Context, redis_url: str | None, apps: tuple[str, ...], toml_file: str | None, log_level: str,
    log_format: str = "text",
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
    _setup_logging(log_level, log_format)
    _cwd_on_path()
    state = CliState(overrides)
    try:
        config = state.config()
    except ConfigError as exc:
        raise CliError(str(exc), exc.exit_code) from None
    if BROKEN_PLUGINS:
        # Keep the healthy plugins' commands working: leave the broken ones out of this process's kernels.
        state.overrides["disable_plugins"] = tuple(sorted({*config.disable_plugins, *BROKEN_PLUGINS}))
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
@click.option("--log-tasks", is_flag=True, default=None,
              help="Log one line per task received and finished (HIVE_LOG_TASKS; on with --log-level debug).")
@click.option("--prefetch", type=click.IntRange(min=0),
              help="Tasks begun beyond the slots while tasks run under 0.1 s (HIVE_PREFETCH).")
@pass_state
def spore(
    state: CliState, name: str | None, concurrency: int | None, apps: tuple[str, ...], tags: tuple[str, ...],
    capability_args: tuple[str, ...] = (), log_tasks: bool | None = None, prefetch: int | None = None,
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
    extra: dict[str, Any] = {"apps": (*state.config().apps, *apps)} if apps else {}
    if log_tasks:
        extra["log_tasks"] = True
    if prefetch is not None:
        extra["prefetch"] = prefetch
    kernel = state.kernel(**extra)
    node = Spore(kernel, name=name, concurrency=concurrency, capabilities=capabilities or None)
    asyncio.run(node.run())
    stuck = node.executor.busy
    if stuck:
        # A sync handler is still blocked past its timeout; its task was already failed or handed back,
        # so exit now rather than wait for the thread at interpreter shutdown. Idle pool threads are not
        # counted: they end on their own once the pool is shut down.
        logging.getLogger("hive").warning("exiting with %d sync handler(s) still blocked", stuck)
        logging.shutdown()
        os._exit(0)


def _placement_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--require``, ``--tag``, ``--spore-wait`` and ``--allow-unknown``, shared by submit and map."""
    for option in reversed((
        click.option("--require", "requires", multiple=True, metavar="NAME[=VALUE]",
                     help="Run only on a spore with this capability (gpu, zone=\"eu\", min_free_memory_mb=2048)."),
        click.option("--tag", "tags", multiple=True, help="Run only on a spore with this tag (repeatable)."),
        click.option("--spore-wait", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Fail the task if no online spore serves its type within this many seconds."),
        click.option("--allow-unknown", is_flag=True,
                     help="Queue a task type no spore has ever advertised (else refused as a likely typo)."),
    )):
        command = option(command)
    return command


def _requirements(requires: tuple[str, ...], tags: tuple[str, ...]) -> dict[str, Any] | None:
    from .policies import parse_requirements

    try:
        return parse_requirements(requires, tags) or None
    except InvalidTask as exc:
        raise click.BadParameter(str(exc), param_hint="--require/--tag") from None


@cli.command()
@click.argument("task_type")
@click.option("--payload", "-p", help="JSON object passed to the task.")
@click.option("--priority", help="high_priority, background or 0-10.")
@click.option("--task-id", help="Use this id (must be new).")
@click.option("--key", help="Idempotency key: while it is held, a submit with it prints the first task's id.")
@click.option("--timeout", type=float, help="Task timeout in seconds.")
@click.option("--max-retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--delay", help="Run no sooner than this from now: seconds or 30s, 5m, 1h, 1d.")
@click.option("--at", "eta", metavar="ISO-8601", help="Run no sooner than this moment, with its UTC offset "
              "(2030-01-31T09:00:00+00:00).")
@click.option("--wait", is_flag=True, help="Wait for the task and print it.")
@click.option("--wait-timeout", type=float, default=None, help="Give up waiting after this many seconds.")
@_placement_options
@pass_state
def submit(
    state: CliState,
    task_type: str,
    payload: str | None,
    priority: str | None,
    task_id: str | None,
    key: str | None,
    timeout: float | None,
    max_retries: int | None,
    delay: str | None,
    eta: str | None,
    wait: bool,
    wait_timeout: float | None,
    requires: tuple[str, ...],
    tags: tuple[str, ...],
    spore_wait: float | None,
    allow_unknown: bool,
) -> None:
    """Enqueue a task of TASK_TYPE and print its id (or, with --wait, the finished task).

    TASK_TYPE need not be imported here: a type the spores advertise is queued by name with their options.
    With --delay or --at the task is stored at once as scheduled ('hive task ID' shows its eta) and runs when due."""
    data = json_arg(payload, "--payload")
    requirements = _requirements(requires, tags)
    if delay is not None and eta is not None:
        raise click.UsageError("give --delay or --at, not both")
    try:
        due = due_time(delay, eta)
    except InvalidTask as exc:
        option = "--at" if eta is not None else "--delay"
        raise click.ClickException(f"{option}: {exc}; nothing was submitted") from None

    async def go() -> None:
        async with MessageBroker(state.kernel()) as broker:
            try:
                new_id = await broker.enqueue_task(
                    task_type, data, priority, task_id, timeout=timeout, max_retries=max_retries,
                    requirements=requirements, wait_timeout=spore_wait, allow_unknown=allow_unknown, key=key,
                    eta=due,
                )
            except UnknownTaskType as exc:
                raise CliError(
                    f"{exc}; check the spelling, load the module that defines it (--app MODULE), start a "
                    "spore that serves it, or pass --allow-unknown; nothing was submitted",
                    exc.exit_code,
                ) from None
            if not wait:
                click.echo(new_id)
                return
            online = await broker.get_nodes()
            if not any(task_type in n.task_types for n in online):
                click.echo(
                    f"hive: no spore online serves {task_type!r} ({len(online)} online); task {new_id} waits "
                    "in its queue until one starts ('hive spore --app MODULE' or 'hive up'); Ctrl-C stops "
                    "waiting, the task stays queued",
                    err=True,
                )
            message = await broker.wait_for_task(new_id, wait_timeout)
            echo_json(wire.to_plain(message))
            if message.status.value != "completed":
                sys.exit(1)

    run_interruptible(go())


@cli.command("task")
@click.argument("task_id")
@pass_state
def task_cmd(state: CliState, task_id: str) -> None:
    """Print one task's status, result, error and latest progress as JSON."""

    async def go() -> None:
        async with MessageBroker(state.kernel()) as broker:
            message = await broker.get_task_with_progress(task_id)
        if message is None:
            raise click.ClickException(no_such_task(task_id))
        echo_json(wire.to_plain(message))

    asyncio.run(go())


@cli.command()
@pass_state
def queues(state: CliState) -> None:
    """Print queue lengths and task counts for the whole cluster as JSON."""

    async def go() -> None:
        async with MessageBroker(state.kernel()) as broker:
            stats: dict[str, Any] = dict(await broker.get_queue_stats())
            stats["nodes_online"] = len(await broker.get_nodes())
        echo_json(stats)

    asyncio.run(go())


@cli.command()
@pass_state
def nodes(state: CliState) -> None:
    """Print the online spores and their last heartbeat as JSON."""

    async def go() -> None:
        async with MessageBroker(state.kernel()) as broker:
            echo_json([wire.to_plain(n) for n in await broker.get_nodes()])

    asyncio.run(go())


@cli.command()
@click.argument("command")
@click.option("--data", help="JSON object sent with the command.")
@click.option("--node", "targets", multiple=True, help="Only this node (repeatable); default: all.")
@click.option("--wait-replies", type=float, default=2.0, show_default=True, help="Seconds to collect replies.")
@pass_state
def broadcast(state: CliState, command: str, data: str | None, targets: tuple[str, ...], wait_replies: float) -> None:
    """Send COMMAND (PING, PAUSE, RESUME, SHUTDOWN or a plugin's) to the spores and print their replies."""
    payload = json_arg(data, "--data")

    async def go() -> list[Any]:
        async with MessageBroker(state.kernel()) as broker:
            online = await broker.get_nodes()
            expected = len([n for n in online if not targets or {n.node_id, n.node_name} & set(targets)])
            if expected == 0:
                whom = f"named by --node ({', '.join(targets)})" if targets else "online"
                raise CliError(
                    f"no spore {whom} to receive {command}; nothing was sent: start one ('hive spore' or "
                    "'hive up'), 'hive nodes' lists those online",
                    EXIT_FAILED,
                )
            message_id = await broker.broadcast_control(command, payload, list(targets))
            replies = await broker.collect_replies(message_id, expected=expected, timeout=wait_replies)
        # "expected": the spores online (and matching --node) when it was sent, each of which should reply.
        echo_json({"message_id": message_id, "expected": expected, "replies": [wire.to_plain(r) for r in replies]})
        return replies

    replies = asyncio.run(go())
    refused = [r for r in replies if not r.ok]
    if refused:
        raise CliError(
            f"{len(refused)} of {len(replies)} spore(s) refused {command}: {refused[0].detail}", EXIT_FAILED
        )


@cli.command()
@click.option("--monitor-address", help="Address the Hive Monitor listens on (HIVE_MONITOR_ADDRESS).")
@click.option("--monitor-port", type=click.IntRange(1, 65535), help="Port of the Hive Monitor (HIVE_MONITOR_PORT).")
@click.option("--no-monitor", is_flag=True, help="Do not serve the Hive Monitor dashboard (HIVE_MONITOR=false).")
@pass_state
def nexus(state: CliState, monitor_address: str | None, monitor_port: int | None, no_monitor: bool) -> None:
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
    asyncio.run(Nexus(state.kernel(**overrides)).run())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show the cluster: nodes (online and lost), their load, and the queues."""
    from .broker.placement import unserved_reason, waiting_for_spores
    from .foreman import ForemanAgent

    async def go() -> dict[str, Any]:
        async with MessageBroker(state.kernel()) as broker:
            foreman = ForemanAgent(broker)
            await foreman.refresh()
            cluster = foreman.get_cluster_status()
            cluster["queues"] = await broker.get_queue_stats()
            nodes = await broker.get_nodes()
            cluster["waiting_for_spores"] = await waiting_for_spores(broker.redis, broker.keys, nodes)
            return cluster

    cluster = asyncio.run(go())
    if as_json:
        echo_json(cluster)
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
    for task_type, count in cluster["waiting_for_spores"].items():
        click.echo(f"waiting: {count} task(s): {unserved_reason(task_type)}")


@cli.command()
@click.option("--spore", "spore_name", help="Also require this spore's heartbeat (node id or name) to be fresh.")
@click.option("--spore-here", is_flag=True, help="Also require a fresh heartbeat from a spore on this host.")
@click.option("--nexus", "nexus_check", is_flag=True, help="Also require a nexus to hold the leader lease.")
@click.option("--max-age", type=float, help="Oldest heartbeat accepted, seconds (default 3 heartbeat intervals).")
@pass_state
def health(state: CliState, spore_name: str | None, spore_here: bool, nexus_check: bool, max_age: float | None) -> None:
    """Exit 0 when healthy (Redis answers, the named process beats); for container and Kubernetes probes."""
    from .health import check_health

    report = check_health(state.config(), spore=spore_name, spore_here=spore_here, nexus=nexus_check,
                          max_age=max_age)
    click.echo(report.text(), err=not report.ok)
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def schedules(state: CliState, as_json: bool) -> None:
    """List the periodic tasks the leading nexus fires: when, the last tick run and the next one."""
    from .schedules import schedule_rows

    async def go() -> list[dict[str, Any]]:
        async with MessageBroker(state.kernel()) as broker:
            return await schedule_rows(broker)

    rows = asyncio.run(go())
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no schedules (a nexus publishes its own: @task(schedule=...) and [schedules.NAME] in hive.toml)")

    def at(moment: float | None) -> str:
        return "-" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    for row in rows:
        click.echo(f"{row['name']:<20.20} {row['task_type']:<16.16} {row['when']:<22.22} "
                   f"last {at(row['last_tick'])}  next {at(row['next_tick'])}  {row['last_task_id'] or ''}".rstrip())


@cli.command()
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--records", is_flag=True, help="List the quarantined records (undecodable data set aside) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def dead(state: CliState, limit: int, records: bool, as_json: bool) -> None:
    """List the dead-letter tasks (failed for good, after their retries), or with --records the records that
    could not be decoded and were quarantined."""

    async def go() -> tuple[list[Any], int]:
        async with MessageBroker(state.kernel()) as broker:
            index = broker.keys.dead_records_index
            quarantined = int(await read_or_empty(broker.redis.zcard(index), 0, index))
            if records:
                return await broker.quarantined_records(limit), quarantined
            return list(await broker.dead_letters(limit)), quarantined

    rows, quarantined = asyncio.run(go())
    if records:
        if as_json:
            echo_json(rows)
            return
        if not rows:
            click.echo("no quarantined records")
        for row in rows:
            try:
                at = datetime.fromtimestamp(float(row["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            except (OverflowError, ValueError, OSError):  # a planted entry's time past what a date can say
                at = "????-??-?? ??:??:?? UTC"
            click.echo(f"{at}  {row['record']}  {row['size']} bytes  {row['reason']}")
        return
    if as_json:
        echo_json([wire.to_plain(m) for m in rows])
        return
    if not rows:
        click.echo("no dead letters")
    for m in rows:
        click.echo(f"{m.task_id}  {m.task_type:<20.20} attempts {m.attempt}  {m.error}")
    if quarantined:
        click.echo(f"and {quarantined} quarantined record(s) that could not be decoded: hive dead --records", err=True)


@cli.command()
@click.argument("task_ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead-letter task.")
@pass_state
def retry(state: CliState, task_ids: tuple[str, ...], all_dead: bool) -> None:
    """Run failed (or stuck) tasks again from scratch, under fresh engine jobs."""
    if not task_ids and not all_dead:
        raise click.UsageError("name TASK_ID(s) or pass --all-dead")

    async def go() -> list[tuple[str, bool]]:
        async with MessageBroker(state.kernel()) as broker:
            ids = list(task_ids)
            if all_dead:
                ids += [m.task_id for m in await broker.dead_letters(limit=100_000)]
            return [(t, await broker.retry_task(t)) for t in ids]

    outcome = asyncio.run(go())
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
        except RecursionError:
            raise click.ClickException("FILE: the JSON array is nested too deeply to read") from None
        return list(items)
    items = []
    for number, line in enumerate(stripped.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            items.append(json.loads(line))
        except ValueError:
            items.append(line)
        except RecursionError:
            raise click.ClickException(f"FILE: line {number} is nested too deeply to read as JSON") from None
    return items


def check_reducer(kernel: Kernel, reducer: str) -> None:
    """Refuse an unknown ``--reducer`` before anything is enqueued (a reducer is asked with no results)."""
    from .errors import PluginError

    try:
        kernel.reduce(reducer, [])
    except PluginError:
        from .default_plugins.reducers import REDUCERS

        raise click.ClickException(
            f"unknown reducer {reducer!r}; built in: {', '.join(sorted(REDUCERS))} (or a plugin's reduce hook); "
            "nothing was submitted"
        ) from None
    except Exception:
        pass


@cli.command("map")
@click.argument("task_type")
@click.argument("source", type=click.File("r"), metavar="FILE|-")
@click.option("--priority", help="high_priority, background or 0-10.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1, show_default=True, help="Items per task.")
@click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds.")
@click.option("--reducer", help="Reduce the results with this reducer (collect, sum, count, merge...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_placement_options
@pass_state
def map_cmd(
    state: CliState, task_type: str, source: Any, priority: str | None, chunk_size: int, timeout: float | None,
    reducer: str | None, as_json: bool, requires: tuple[str, ...], tags: tuple[str, ...], spore_wait: float | None,
    allow_unknown: bool,
) -> None:
    """Run TASK_TYPE once per item of FILE (a JSON array or one item per line; - for stdin)."""
    from .jobs import MapJob

    items = read_items(source)
    requirements = _requirements(requires, tags)
    if not items:
        raise click.ClickException("no items to map (the input is empty)")
    if reducer:
        check_reducer(state.kernel(), reducer)

    async def go() -> list[Any]:
        kernel = state.kernel()
        async with MessageBroker(kernel) as broker:
            job = MapJob(broker, task_type, items, chunk_size=chunk_size, priority=priority,
                         requirements=requirements, wait_timeout=spore_wait, allow_unknown=allow_unknown)
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

    outcomes, reduced, duration_s = run_interruptible(go())
    if as_json:
        from .parallel import summarize

        echo_json({"summary": summarize(outcomes, duration_s), "results": [wire.to_plain(o) for o in outcomes],
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
def plugins(state: CliState, show_all: bool, hook: str | None) -> None:
    """List installed plugins as JSON: name, version, hooks and task types."""
    echo_json(state.kernel().describe_plugins(include_defaults=show_all, hook=hook))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_state
def doctor(state: CliState, as_json: bool) -> None:
    """Check Redis (address, password, version), the spores and their task types, the nexus, clocks and
    plugins, and say what to fix. Exit 1 when a check failed (warnings do not)."""
    import attrs

    from .doctor import run_doctor

    checks = run_doctor(state.config(), BROKEN_PLUGINS)
    if as_json:
        echo_json([attrs.asdict(c) for c in checks])
    else:
        for check in checks:
            click.echo(check.line())
    failed = [c for c in checks if c.state == "fail"]
    if failed:
        click.echo(f"hive doctor: {len(failed)} problem(s) to fix, the first: {failed[0].fix}", err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--spores", "-n", default=2, show_default=True, type=click.IntRange(min=0), help="Local spores to start.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Slots per spore.")
@click.option("--app", "apps", multiple=True, help="Module with task types for the spores (repeatable).")
@click.option("--embedded", type=click.Choice(["auto", "always", "redis-server", "fakeredis"]), default="auto",
              show_default=True, help="auto: use a configured or default Redis if one answers, else start one.")
@click.option("--no-nexus", is_flag=True, help="Do not start a nexus (watchdog) process.")
@click.option("--monitor-port", type=click.IntRange(1, 65535), help="Port of the nexus's Hive Monitor.")
@click.option("--no-monitor", is_flag=True, help="The nexus serves no Hive Monitor dashboard.")
@click.option("--autoscale", metavar="MIN:MAX", help="Grow and shrink the spores between MIN and MAX with the backlog.")
@click.option("--scale-backlog", type=click.IntRange(min=1), default=20, show_default=True,
              help="Autoscale: grow when more tasks than this wait per spore.")
@click.option("--scale-wait", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Autoscale: grow when the oldest task has waited longer, seconds.")
@click.option("--scale-cooldown", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Autoscale: stop a spore idle this long, seconds.")
@pass_state
def up(state: CliState, spores: int, concurrency: int | None, apps: tuple[str, ...], embedded: str,
       no_nexus: bool, monitor_port: int | None = None, no_monitor: bool = False, autoscale: str | None = None,
       scale_backlog: int = 20, scale_wait: float = 5.0, scale_cooldown: float = 30.0) -> None:
    """Start Redis (if needed) and N local spores (or MIN..MAX with --autoscale); Ctrl-C stops them all cleanly."""
    from .supervisor import LocalCluster

    cluster_class: type[LocalCluster] = LocalCluster
    policy = None
    if autoscale:
        from .autoscale import AutoscaledCluster, ScalePolicy, parse_bounds

        try:
            low, high = parse_bounds(autoscale)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--autoscale") from None
        policy = ScalePolicy(min_spores=low, max_spores=high, backlog_per_spore=scale_backlog,
                             max_wait=scale_wait, cooldown=scale_cooldown)
        cluster_class, spores = AutoscaledCluster, low
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
    apps = tuple(dict.fromkeys((*config.apps, *apps)))  # `hive --app M up` and HIVE_APP reach the spores too
    from .kernel import import_app

    for app in apps:  # one line here, before anything starts, rather than one per spore that dies of it
        import_app(app)
    with cluster_class(config, spores=spores, concurrency=concurrency, apps=apps, embedded=embedded,
                      nexus=not no_nexus, nexus_env=nexus_env) as local:
        click.echo(f"hive up: Redis is {local.redis_description}")
        click.echo(f"hive up: {spores} spore(s){'' if no_nexus else ' and a nexus'} running; "
                   f"REDIS_URL={local.safe_url}  (Ctrl-C to stop)")
        if not no_nexus and config.monitor:
            host = f"[{config.monitor_address}]" if ":" in config.monitor_address else config.monitor_address
            click.echo(f"hive up: Hive Monitor at http://{host}:{config.monitor_port}/")
        try:
            if policy is not None:
                from .autoscale import run_autoscaled

                click.echo(f"hive up: autoscaling {policy.min_spores}..{policy.max_spores} spore(s)")
                run_autoscaled(local, policy)  # type: ignore[arg-type]
            else:
                local.wait()
        except KeyboardInterrupt:
            click.echo("hive up: stopping spores...")


def _cwd_on_path() -> None:
    """Put the current directory first on ``sys.path``, as Celery, RQ, Dramatiq and ARQ do, so
    ``--app myapp.tasks`` finds ``./myapp`` (``python -m hive_framework`` already has it; the ``hive``
    script does not)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


#: Plugins whose entry point failed to load in this process: name -> the error (see ``hive doctor``).
BROKEN_PLUGINS: dict[str, str] = {}


def _register_plugin_commands() -> None:
    """Let plugins add subcommands (``register_commands``) without failing the CLI if config is broken.

    App modules are not imported here: an app that fails to import (or exists only in a release an OTA
    supervisor adds) must not take the plugins' commands away; the command that needs it reports it.
    A plugin whose entry point fails to load is left out, with one warning line naming it and
    ``HIVE_DISABLE_PLUGINS=<name>``; the other plugins' commands still work.
    """
    try:
        config = HiveConfig.load().evolve(apps=())
    except HiveError:
        # The commands still exist, built from the defaults: run, each one reports the broken setting
        # as any command does, where a missing command would only say "No such command".
        config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None)
    kernel = None
    for _ in range(20):
        try:
            kernel = Kernel(config.evolve(disable_plugins=tuple(sorted({*config.disable_plugins, *BROKEN_PLUGINS}))))
            break
        except PluginError as exc:
            if exc.plugin is None or exc.plugin in BROKEN_PLUGINS:
                return
            BROKEN_PLUGINS[exc.plugin] = str(exc)
            click.echo(
                f"hive: warning: {exc}; its commands are missing. Reinstall or fix it, or set "
                f"HIVE_DISABLE_PLUGINS={exc.plugin} to leave it out",
                err=True,
            )
    if kernel is not None:
        _add_plugin_commands(kernel, cli)


def _add_plugin_commands(kernel: Kernel, group: click.Group) -> None:
    """Plugins' ``register_commands`` hooks, through the kernel (the only caller of ``pm.hook``)."""
    kernel.register_commands(group)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_plugin_commands()
    from .demo import demo

    cli.add_command(demo)
    share_app_option(cli)
    from .redis_cli import redis_group

    cli.add_command(redis_group)
    cli.main(args=argv, prog_name="hive")


share_app_option(cli)
