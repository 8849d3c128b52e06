"""The ``scan`` tool: a security audit of a folder on this machine, run by hive-plugin-security-scan's spores.

Only paths under the configured ``scan_roots`` are scanned (after resolving ``..`` and symbolic links), so an
agent cannot read the rest of the machine through the scanners. A repository is scanned from a clone that is
already on disk: by its path, a ``file://`` URL, or its git URL, which names the clone under a root whose
``origin`` (any remote) is that repository. Nothing is ever fetched.
"""

from __future__ import annotations

import configparser
import logging
import math
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from hive_framework import HiveError

if TYPE_CHECKING:
    from hive_framework import ItemOutcome, MessageBroker
    from mcp.server.mcpserver import Context

    from .settings import McpSettings

logger = logging.getLogger("hive_plugin_mcp")

SARIF_URI = "hive://scans/{scan_id}/sarif"
#: SARIF logs of this many recent scans are kept (in this process) for their resource.
KEPT_SCANS = 32


class PathRefused(HiveError):
    """A ``scan`` target that is not an existing path under an allowed root."""


def allowed_path(raw: str, roots: Sequence[str]) -> Path:
    """``raw`` (an absolute path, a ``file://`` URL or a clone's git URL) resolved, if it is under one of ``roots``.

    Anything else is :class:`PathRefused`: a git URL with no clone under the roots, a relative path, a missing
    path, or one that leaves every root (through ``..`` or a symbolic link).
    """
    text = raw.strip()
    if text.lower().startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise PathRefused(f"{raw!r}: only file:// URLs of this machine can be scanned")
        text = unquote(parts.path)
    elif "://" in text or SCP_URL.fullmatch(text):
        return find_clone(text, roots)
    if "\0" in text:
        raise PathRefused(f"{raw!r} is not a valid path")
    if not roots:
        raise PathRefused("scanning is enabled but no scan_roots are configured in [plugins.mcp]")
    target = Path(text)
    if not target.is_absolute():
        raise PathRefused(f"{raw!r} is not an absolute path")
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise PathRefused(f"{raw!r} does not exist") from None
    for root in roots:
        base = Path(root).expanduser().resolve()
        if resolved == base or resolved.is_relative_to(base):
            return resolved
    raise PathRefused(f"{raw!r} is outside the allowed scan roots ({', '.join(roots)})")


#: ``user@host:path`` (git's scp-like syntax).
SCP_URL = re.compile(r"[\w.-]+@[\w.-]+:(?!//).+")
#: How deep under a root a clone is looked for, and how many folders are looked at, at most.
CLONE_SEARCH_DEPTH = 3
CLONE_SEARCH_FOLDERS = 5000


def repository_key(url: str) -> str | None:
    """``host/owner/repo`` for a git URL in any common spelling (https, ssh, scp-like, with or without ``.git``)."""
    text = url.strip()
    scp = SCP_URL.fullmatch(text)
    if scp and "://" not in text:
        host, _, path = text.split("@", 1)[1].partition(":")
    else:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    path = path.strip("/").removesuffix(".git").strip("/")
    if not host or not path:
        return None
    return f"{host.lower()}/{path}"


def _origin_urls(repo: Path) -> list[str]:
    """The remote URLs in a clone's ``.git/config`` (read as text: nothing is run)."""
    config = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        config.read(repo / ".git" / "config", encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return []
    return [config[s]["url"] for s in config.sections() if s.startswith("remote ") and "url" in config[s]]


def find_clone(url: str, roots: Sequence[str]) -> Path:
    """A clone of the repository at ``url`` already on disk under one of ``roots`` (nothing is fetched)."""
    wanted = repository_key(url)
    if wanted is None:
        raise PathRefused(f"{url!r}: only paths, file:// URLs and git URLs of clones under the scan roots can be "
                          "scanned")
    if not roots:
        raise PathRefused("scanning is enabled but no scan_roots are configured in [plugins.mcp]")
    looked = 0
    for root in roots:
        base = Path(root).expanduser().resolve()
        for folder, dirs, _files in os.walk(base):
            depth = len(Path(folder).relative_to(base).parts)
            looked += 1
            if ".git" in dirs and any(repository_key(u) == wanted for u in _origin_urls(Path(folder))):
                return allowed_path(folder, roots)  # the same checks as a path (links out of the roots...)
            dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < CLONE_SEARCH_DEPTH else []
            if looked > CLONE_SEARCH_FOLDERS:
                break
    raise PathRefused(f"no clone of {url!r} under the scan roots; clone it there first (this server fetches "
                      "nothing)")


class _Progress:
    """run_scan's progress (sync calls) passed on as MCP progress notifications through a stream."""

    def __init__(self, send: MemoryObjectSendStream[tuple[float, float, str]]) -> None:
        self.send = send
        self.total = 0
        self.done = 0
        self.findings = 0

    def start(self, shards: int) -> None:
        self.total = shards
        self.send.send_nowait((0, shards, f"scanning in {shards} shards"))

    def advance(self, outcome: ItemOutcome) -> None:
        self.done += 1
        if outcome.ok and isinstance(outcome.result, dict):
            self.findings += len(outcome.result.get("findings", []))
        self.send.send_nowait((self.done, self.total, f"{self.done}/{self.total} shards, {self.findings} findings"))


class _TaskRecorder:
    """The broker, noting the ids of the tasks enqueued through it (so a cancelled scan can cancel them)."""

    def __init__(self, broker: MessageBroker) -> None:
        self._broker = broker
        self.task_ids: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def enqueue_many(self, specs: Sequence[Any]) -> list[str]:
        # Shielded: a cancellation arriving mid-enqueue waits for the ids, so the tasks can be cancelled.
        with anyio.CancelScope(shield=True):
            ids: list[str] = await self._broker.enqueue_many(specs)
            self.task_ids.extend(ids)
        return ids


class Scans:
    """Runs scans and keeps the SARIF logs of the last few for ``hive://scans/{scan_id}/sarif``."""

    def __init__(self, broker: MessageBroker, settings: McpSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.sarif: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def scan(self, path: str, top: int, shards: int | None, wait_timeout: float,
                   ctx: Context | None) -> dict[str, Any]:
        from hive_plugin_security_scan.inventory import collect
        from hive_plugin_security_scan.job import run_scan
        from hive_plugin_security_scan.output import to_sarif
        from hive_plugin_security_scan.settings import ScanSettings
        from hive_plugin_security_scan.task import TASK_TYPE

        target = allowed_path(path, self.settings.scan_roots)
        scan_settings = ScanSettings.from_config(self.broker.config)
        online = [n for n in await self.broker.get_nodes() if TASK_TYPE in n.task_types]
        if not online:
            raise HiveError(f"no online spore runs {TASK_TYPE} (install hive-plugin-security-scan where spores run)")
        inventory = await anyio.to_thread.run_sync(collect, target, scan_settings)
        count = shards or scan_settings.shards_per_spore * len(online)
        send, receive = anyio.create_memory_object_stream[tuple[float, float, str]](math.inf)
        async with anyio.create_task_group() as group:

            async def relay() -> None:
                async with receive:
                    async for done, total, message in receive:
                        if ctx is not None:
                            await ctx.report_progress(done, total, message)

            group.start_soon(relay)
            recorder = _TaskRecorder(self.broker)
            try:
                with send:
                    report = await run_scan(recorder, inventory, shards=count, timeout=wait_timeout,
                                            settings=scan_settings, progress=_Progress(send))
            except anyio.get_cancelled_exc_class():
                # The agent cancelled the call: stop the shards still queued or running.
                with anyio.CancelScope(shield=True):
                    cancelled = [t for t in recorder.task_ids if await self.broker.cancel_task(t)]
                logger.info("scan of %s: call cancelled, %d shard tasks cancelled", target, len(cancelled))
                raise
        scan_id = uuid.uuid4().hex
        self.sarif[scan_id] = to_sarif(report)
        while len(self.sarif) > KEPT_SCANS:
            self.sarif.popitem(last=False)
        return {
            "scan_id": scan_id,
            "root": str(report.root),
            "summary": report.summary(),
            "summary_line": report.summary_line(),
            "top_findings": [f.to_dict() for f in report.findings[:top]],
            "sarif_uri": SARIF_URI.format(scan_id=scan_id),
        }
