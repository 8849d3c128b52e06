"""``hive scan PATH``: audit a folder on the hive's spores, or on a private local cluster when none is configured.

Exit status (:data:`EXIT_CODES`): 0 when the scan completed, whatever it found; 1 when a finding is at or
above ``--fail-on``; 2 on a usage error (click's own); 3 when part of the tree was not scanned (a file too
large or unreadable, an unreadable folder, a shard that failed or did not finish in time) unless
``--allow-incomplete``: the findings of the rest are still printed; 4 when the scan could not run (a bad
setting, no spore, an internal error).
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
from hive_framework import HiveConfig, HiveError, ItemOutcome, Kernel, MessageBroker, private_namespace

from .cache import CacheLookup, FileCache, FindingsCache, RedisCache, default_cache_dir
from .cache import lookup as cache_lookup
from .findings import SEVERITIES
from .history import HISTORY_SCANNERS, HistoryError, in_history, materialised
from .inventory import Inventory, collect
from .job import ScanReport, run_scan
from .output import FORMATS, render
from .paths import display
from .settings import ScanSettings
from .task import TASK_TYPE

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_ERROR = 4
EXIT_CODES = {
    EXIT_OK: "the scan completed (whatever it found, without --fail-on)",
    EXIT_FINDINGS: "a finding at or above --fail-on",
    EXIT_USAGE: "usage error (bad option or argument)",
    EXIT_INCOMPLETE: "part of the tree was not scanned (too large, unreadable, shard failed or timed out); "
                     "--allow-incomplete turns it into 0",
    EXIT_ERROR: "the scan could not run (bad setting, no spore, internal error)",
}
SPORE_START_TIMEOUT = 60.0


def default_spores() -> int:
    """Local spores when none is configured: one per CPU (scanning is CPU-bound), at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class UsageLine(click.ClickException):
    """A usage mistake told in one line (click's UsageError prints three): exit status 2."""

    exit_code = 2


class ScanError(click.ClickException):
    """The scan could not run: one line on stderr and exit status 4 (never 1, which means findings)."""

    exit_code = EXIT_ERROR


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
            raise ScanError(
                f"no online spore at {broker.config.safe_redis_url()} runs {TASK_TYPE}: start spores where "
                "hive-plugin-security-scan is installed (hive up, hive spore), or pass --local to start "
                "local spores for this scan"
            )
        if all(p.poll() is not None for p in procs):
            raise ScanError("the local spores exited before taking any work (see the errors above)")
        if time.monotonic() > deadline:
            raise ScanError(f"no local spore came up within {SPORE_START_TIMEOUT:g}s")
        await asyncio.sleep(0.1)


async def _scan(config: HiveConfig, inventory: Inventory, settings: ScanSettings, *, shards: int | None,
                timeout: float, procs: list[Any] | None, cache_prefix: str | None = None,
                file_cache: FileCache | None = None, cached: CacheLookup | None = None,
                scanners: tuple[str, ...] = ()) -> ScanReport:
    """Run the scan on ``config``'s hive. The cache is ``file_cache``, else the hive's Redis under
    ``cache_prefix`` (None: no cache)."""
    async with MessageBroker(Kernel(config)) as broker:
        cache: FindingsCache | None = file_cache
        if cache is None and cache_prefix is not None:
            cache = RedisCache(broker.redis, cache_prefix)
        if cache is not None and cached is None:
            cached = await cache_lookup(cache, inventory)
        if cached is not None and not cached.misses:  # nothing to scan: no spore needed
            return await run_scan(broker, inventory, shards=1, settings=settings, cache=cache, cached=cached)
        online = await _ready_spores(broker, procs)
        count = shards or settings.shards_per_spore * (len(procs) if procs is not None else online)
        bar = ProgressBar()
        try:
            return await run_scan(broker, inventory, shards=count, timeout=timeout, settings=settings, progress=bar,
                                  cache=cache, cached=cached, scanners=scanners)
        finally:
            bar.close()


def scan_with_cluster(config: HiveConfig, inventory: Inventory, settings: ScanSettings, *, spores: int | None,
                      shards: int | None, timeout: float, local: bool = False, use_cache: bool = True,
                      scanners: tuple[str, ...] = ()) -> ScanReport:
    """Scan on the configured cluster's spores; with no Redis configured (or ``local``), start local spores
    for the scan (on a private Redis, or on the configured one under a private key prefix) and stop them.

    The findings cache (unless ``use_cache`` is false or ``cache_ttl`` is 0) lives in the configured Redis,
    under its own key prefix; with a private Redis, in a file under ``cache_dir``. When every file's
    results are cached, no spore is started.
    """
    configured = config.redis_is_configured()
    use_cache = use_cache and settings.cache_ttl > 0 and not scanners
    cache_prefix = config.key_prefix if use_cache and configured else None
    if configured and not local:
        return asyncio.run(_scan(config, inventory, settings, shards=shards, timeout=timeout, procs=None,
                                 cache_prefix=cache_prefix, scanners=scanners))
    file_cache = None
    cached = None
    if use_cache and not configured:
        file_cache = FileCache(Path(settings.cache_dir or default_cache_dir()) / "findings.sqlite3")
        cached = asyncio.run(cache_lookup(file_cache, inventory))
        if not cached.misses:
            return asyncio.run(run_scan(None, inventory, shards=1, settings=settings, cache=file_cache,
                                        cached=cached))
    from hive_framework import LocalCluster

    namespace = private_namespace("hive-scan")  # the local spores' keys and this client's: a prefix of their own
    count = spores or default_spores()
    embedded = "never" if configured else "always"
    with LocalCluster(config, spores=count, concurrency=1, embedded=embedded, extra_env=namespace.env,
                      quiet=True) as cluster:
        click.echo(f"hive scan: Redis is {cluster.redis_description}; starting {count} local spore(s)", err=True)
        local_config = config.evolve(redis_url=cluster.url, **namespace.settings)
        return asyncio.run(_scan(local_config, inventory, settings, shards=shards, timeout=timeout,
                                 procs=list(cluster.procs), cache_prefix=cache_prefix, file_cache=file_cache,
                                 cached=cached, scanners=scanners))


def _scan_tree(config: HiveConfig, path: Path, settings: ScanSettings, exclude: tuple[str, ...], *,
               spores: int | None, shards: int | None, timeout: float, local: bool, use_cache: bool) -> ScanReport:
    inventory = collect(path, settings, exclude)
    click.echo(
        f"hive scan: {len(inventory.files)} files ({inventory.total_bytes} bytes) under {display(str(inventory.root))}"
        f" ({'as git lists them' if inventory.mode == 'git' else 'walked'}); {len(inventory.skipped)} skipped, "
        f"{len(inventory.excluded)} excluded, {inventory.ignored} ignored",
        err=True,
    )
    if not inventory.files:
        return ScanReport(root=inventory.root, findings=[], skipped=inventory.skipped, ignored=inventory.ignored,
                          excluded=inventory.excluded)
    try:
        return scan_with_cluster(config, inventory, settings, spores=spores, shards=shards, timeout=timeout,
                                 local=local, use_cache=use_cache)
    except HiveError as exc:
        raise ScanError(str(exc)) from None


def _scan_history(config: HiveConfig, path: Path, rev_range: str, settings: ScanSettings, *, spores: int | None,
                  shards: int | None, timeout: float, local: bool) -> ScanReport:
    try:
        with materialised(path.resolve(), rev_range, settings) as (inventory, where):
            click.echo(f"hive scan: {len(inventory.files)} text blobs ({inventory.total_bytes} bytes) added in "
                       f"{rev_range} under {display(str(path.resolve()))}; {len(inventory.skipped)} too large",
                       err=True)
            if inventory.files:
                try:
                    report = scan_with_cluster(config, inventory, settings, spores=spores, shards=shards,
                                               timeout=timeout, local=local, use_cache=False,
                                               scanners=HISTORY_SCANNERS)
                except HiveError as exc:
                    raise ScanError(str(exc)) from None
            else:
                report = ScanReport(root=inventory.root, findings=[], skipped=inventory.skipped)
            return in_history(report, path.resolve(), where)
    except HistoryError as exc:
        raise ScanError(str(exc)) from None


@click.command("scan")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people, json, or sarif (SARIF 2.1.0, for code-scanning tools).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file instead of stdout.")
@click.option("--fail-on", type=click.Choice(SEVERITIES),
              help="Exit 1 when a finding is at or above this severity. Default: findings never fail the command.")
@click.option("--spores", "-n", type=click.IntRange(min=1),
              help="Local spores to start when no Redis is configured  [default: one per CPU, at most 4]")
@click.option("--shards", type=click.IntRange(min=1),
              help="Split the files into about N shards  [default: 8 per spore, heaviest first]")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="gitignore-style pattern to leave out, relative to PATH (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Stop waiting for shards after this many seconds (unfinished ones are reported).")
@click.option("--local", is_flag=True,
              help="Start local spores for this scan even when a Redis is configured (they use it, under a "
                   "key prefix of their own).")
@click.option("--no-cache", is_flag=True,
              help="Scan every file again, ignoring (and not updating) the cache of findings per file content.")
@click.option("--history", is_flag=False, flag_value="HEAD", default=None, metavar="[REV-RANGE]",
              help="Scan git history for secrets instead of the files: every blob the commits of REV-RANGE "
                   "(default HEAD: all history) added or changed, once, reported with commit, path and line.")
@click.option("--allow-incomplete", is_flag=True,
              help="Exit 0 rather than 3 when files were skipped as too large or unreadable, or a shard failed.")
@click.pass_obj
def scan(state: Any, path: Path, fmt: str, output: Path | None, fail_on: str | None, spores: int | None,
         shards: int | None, exclude: tuple[str, ...], timeout: float, local: bool, no_cache: bool,
         history: str | None, allow_incomplete: bool) -> None:
    """Audit PATH for security issues (bandit, detect-secrets, dependency files), split across spores.

    Honours .gitignore; skips binaries, virtualenvs, vendored folders and .git. Without REDIS_URL or
    REDIS_HOST (or with --local), starts local spores for the scan, and a private Redis when none is
    configured, and stops them afterwards.

    Exit status: 0 when the scan completed, whatever it found; 1 when a finding is at or above --fail-on;
    2 on a usage error; 3 when part of the tree was not scanned (too large, unreadable, a shard failed),
    unless --allow-incomplete; 4 when the scan could not run.
    """
    if not path.exists():  # one line, not click's three-line usage error; exit 2 as any usage error
        raise UsageLine(f"no such file or folder: {path}; name the folder to scan, e.g. 'hive scan .'")
    try:
        config: HiveConfig = state.config()
        settings = ScanSettings.from_config(config)
    except HiveError as exc:
        raise ScanError(str(exc)) from None
    except click.ClickException as exc:
        raise ScanError(exc.message) from None
    if history is not None:
        report = _scan_history(config, path, history, settings, spores=spores, shards=shards, timeout=timeout,
                               local=local)
    else:
        report = _scan_tree(config, path, settings, exclude, spores=spores, shards=shards, timeout=timeout,
                            local=local, use_cache=not no_cache)
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
        click.echo(
            f"hive scan: {len(report.failures)} shard(s) and {len(report.not_scanned)} file(s) or folder(s) not "
            f"scanned; the report is incomplete" + (" (accepted: --allow-incomplete)" if allow_incomplete else ""),
            err=True,
        )
        if not allow_incomplete:
            sys.exit(EXIT_INCOMPLETE)
