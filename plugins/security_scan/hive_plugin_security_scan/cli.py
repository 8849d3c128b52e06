"""``hive scan PATH``: audit a folder on the hive's spores, or on a private local cluster when none is configured.

Exit status: 0 when the scan completed (whatever it found, unless ``--fail-on``); 1 when a finding is at
or above ``--fail-on`` (or on an error such as a bad setting); 3 when part of the tree could not be
scanned (a shard failed or did not finish in time): the findings of the rest are still printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from hive_framework import HiveConfig, HiveError, Kernel
from hive_framework.jobs import ItemOutcome

from .findings import SEVERITIES
from .inventory import Inventory, collect
from .job import ScanReport, run_scan
from .output import FORMATS, render
from .settings import ScanSettings
from .task import TASK_TYPE

EXIT_FINDINGS = 1
EXIT_INCOMPLETE = 3
SPORE_START_TIMEOUT = 60.0


def default_spores() -> int:
    """Local spores when none is configured: one per CPU (scanning is CPU-bound), at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class ProgressBar:
    """A ``click.progressbar`` on stderr counting shards, with findings and failures so far."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._bar: Any = None
        self.findings = 0
        self.failed = 0

    def start(self, shards: int) -> None:
        self._bar = self._stack.enter_context(
            click.progressbar(length=shards, label="scanning", file=sys.stderr, show_pos=True,
                              item_show_func=lambda text: text)
        )

    def advance(self, outcome: ItemOutcome) -> None:
        if outcome.ok and isinstance(outcome.result, dict):
            self.findings += len(outcome.result.get("findings", []))
        else:
            self.failed += 1
        self._bar.update(1, f"{self.findings} findings" + (f", {self.failed} failed" if self.failed else ""))

    def close(self) -> None:
        self._stack.close()


async def _ready_spores(broker: Any, procs: list[Any] | None) -> int:
    """Online spores that run ``security_scan``. Local ones (``procs``) get time to start; else 0 is an error."""
    deadline = time.monotonic() + SPORE_START_TIMEOUT
    while True:
        nodes = [n for n in await broker.get_nodes() if TASK_TYPE in n.task_types]
        if nodes:
            return len(nodes)
        if procs is None:
            raise click.ClickException(
                f"no online spore at {broker.config.safe_redis_url()} runs {TASK_TYPE}: start spores where "
                "hive-plugin-security-scan is installed (hive up, hive spore), or pass --local to start "
                "local spores for this scan"
            )
        if all(p.poll() is not None for p in procs):
            raise click.ClickException("the local spores exited before taking any work (see the errors above)")
        if time.monotonic() > deadline:
            raise click.ClickException(f"no local spore came up within {SPORE_START_TIMEOUT:g}s")
        await asyncio.sleep(0.1)


async def _scan(config: HiveConfig, inventory: Inventory, settings: ScanSettings, *, shards: int | None,
                timeout: float, procs: list[Any] | None) -> ScanReport:
    async with Kernel(config).create_broker() as broker:
        online = await _ready_spores(broker, procs)
        count = shards or settings.shards_per_spore * (len(procs) if procs is not None else online)
        bar = ProgressBar()
        try:
            return await run_scan(broker, inventory, shards=count, timeout=timeout, settings=settings, progress=bar)
        finally:
            bar.close()


def _private_namespace() -> tuple[dict[str, str], dict[str, Any]]:
    """Environment for the local spores and the matching settings for this client: a key prefix of its own."""
    prefix = f"hive-scan-{time.time_ns()}"
    env = {"HIVE_KEY_PREFIX": prefix, "HIVE_HIGH_PRIORITY_QUEUE": f"{prefix}:high",
           "HIVE_BACKGROUND_QUEUE": f"{prefix}:background", "HIVE_BROADCAST_CHANNEL": f"{prefix}:broadcast"}
    settings = {"key_prefix": prefix, "high_priority_queue": f"{prefix}:high",
                "background_queue": f"{prefix}:background", "broadcast_channel": f"{prefix}:broadcast"}
    return env, settings


def scan_with_cluster(config: HiveConfig, inventory: Inventory, settings: ScanSettings, *, spores: int | None,
                      shards: int | None, timeout: float, local: bool = False) -> ScanReport:
    """Scan on the configured cluster's spores; with no Redis configured (or ``local``), start local spores
    for the scan (on a private Redis, or on the configured one under a private key prefix) and stop them."""
    configured = config.redis_is_configured()
    if configured and not local:
        return asyncio.run(_scan(config, inventory, settings, shards=shards, timeout=timeout, procs=None))
    from hive_framework.cli import LocalCluster

    env, private = _private_namespace()
    count = spores or default_spores()
    embedded = "never" if configured else "always"
    with LocalCluster(config, spores=count, concurrency=1, embedded=embedded, extra_env=env, quiet=True) as cluster:
        click.echo(f"hive scan: Redis is {cluster.redis_description}; starting {count} local spore(s)", err=True)
        local_config = config.evolve(redis_url=cluster.url, **private)
        return asyncio.run(_scan(local_config, inventory, settings, shards=shards, timeout=timeout,
                                 procs=list(cluster.procs)))


@click.command("scan")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people, json, or sarif (SARIF 2.1.0, for code-scanning tools).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file instead of stdout.")
@click.option("--fail-on", type=click.Choice(SEVERITIES),
              help="Exit 1 when a finding is at or above this severity. Default: findings never fail the command.")
@click.option("--spores", "-n", type=click.IntRange(min=1),
              help="Local spores to start when no Redis is configured  [default: one per CPU, at most 4]")
@click.option("--shards", type=click.IntRange(min=1),
              help="Split the files into about N shards  [default: 4 per spore]")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="gitignore-style pattern to leave out, relative to PATH (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Stop waiting for shards after this many seconds (unfinished ones are reported).")
@click.option("--local", is_flag=True,
              help="Start local spores for this scan even when a Redis is configured (they use it, under a "
                   "key prefix of their own).")
@click.pass_obj
def scan(state: Any, path: Path, fmt: str, output: Path | None, fail_on: str | None, spores: int | None,
         shards: int | None, exclude: tuple[str, ...], timeout: float, local: bool) -> None:
    """Audit PATH for security issues (bandit, detect-secrets, dependency files), split across spores.

    Honours .gitignore; skips binaries, virtualenvs, vendored folders and .git. Without REDIS_URL or
    REDIS_HOST (or with --local), starts local spores for the scan, and a private Redis when none is
    configured, and stops them afterwards.

    Exit status: 0 when the scan completed, whatever it found; 1 when a finding is at or above --fail-on;
    3 when part of the tree could not be scanned.
    """
    config: HiveConfig = state.config()
    settings = ScanSettings.from_config(config)
    inventory = collect(path, settings, exclude)
    click.echo(
        f"hive scan: {len(inventory.files)} files ({inventory.total_bytes} bytes) under {inventory.root}; "
        f"{len(inventory.skipped)} skipped, {inventory.ignored} ignored",
        err=True,
    )
    if inventory.files:
        try:
            report = scan_with_cluster(config, inventory, settings, spores=spores, shards=shards, timeout=timeout,
                                       local=local)
        except HiveError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        report = ScanReport(root=inventory.root, findings=[], skipped=inventory.skipped, ignored=inventory.ignored)
    text = render(report, fmt, colour=output is None)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)
    if output is not None or fmt != "table":
        click.echo(f"hive scan: {report.summary_line()}", err=True)
    if fail_on and report.at_or_above(fail_on):
        sys.exit(EXIT_FINDINGS)
    if not report.complete:
        click.echo(f"hive scan: {len(report.failures)} shard(s) not scanned; the report is incomplete", err=True)
        sys.exit(EXIT_INCOMPLETE)
