"""The supervisor (``hive ota spore``): runs one spore process on the ``current`` release, switches releases when
the spore asks, and commits a switch only when the new process proves healthy, else rolls it back.

Why a supervisor and not ``os.execv`` in the spore: a release that fails to import (or hangs before its first
heartbeat) cannot roll itself back; the process that decides must not run the release's code. The supervisor
imports hive and this plugin only, never the apps.

Cycle::

    start child on current ──▶ child runs ──▶ exits ─┬─ pending.json? ──▶ switch current (probation.json)
         ▲                                           ├─ exit 0 (SIGTERM, SHUTDOWN) ──▶ supervisor exits 0
         │                                           └─ crash ──▶ restart after a backoff
         └── probation: heartbeat from the child's pid with the new code_version, then an ``ota.probe`` task
             pinned to it completes, all within ``health_window`` ─▶ commit; else switch back, restart the
             old release, report ``rolled_back`` (with the reason) once it is healthy again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import psutil
from hive_framework import HiveConfig, Kernel, MessageBroker, TaskStatus

from .errors import OTAError
from .releases import Release, ReleaseStore, read_json, write_json
from .settings import OTASettings
from .store import OTAKeys, report

logger = logging.getLogger("hive.ota.supervisor")
#: prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


#: libc's symbols, loaded in the supervisor (never in the forked child, where loading is not safe).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: get SIGTERM when the supervisor dies (even by kill -9), so a
    spore never outlives its supervisor; if the supervisor is already gone, exit now. (Linux; elsewhere a
    restarted supervisor stops the leftover child, see ``_stop_leftover_child``.)"""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
PROBE_TASK = "ota.probe"
MAX_BACKOFF = 30.0


class Supervisor:
    def __init__(
        self, config: HiveConfig, settings: OTASettings, *, hive_args: list[str], spore_args: list[str]
    ) -> None:
        self.config = config
        self.settings = settings
        self.store = ReleaseStore(settings.root_dir(config))
        self.keys = OTAKeys(config.key_prefix)
        self.hive_args = hive_args
        self.spore_args = spore_args
        self.child: asyncio.subprocess.Process | None = None
        self.child_release: Release | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.stopping = asyncio.Event()
        self.node_id: str | None = None
        self._lock_handle: IO[bytes] | None = None
        self.broker: Any = None
        self._pump_task: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------------------------

    def _lock(self) -> None:
        self.store.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.store.lock_file, "ab")  # noqa: SIM115 - held for the supervisor's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OTAError(
                f"another supervisor runs on {self.store.root}; "
                "give each spore its own state_dir (or [plugins.ota] root)"
            ) from None
        self._lock_handle = handle

    async def run(self) -> int:
        self._lock()
        kernel = Kernel(self.config)
        self.broker = MessageBroker(kernel)
        await self.broker.connect()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.store.ensure()
        await self._stop_leftover_child()
        self.store.discard_incoming()
        self._resume_probation()
        crashes = 0
        try:
            while not self.stopping.is_set():
                probation = read_json(self.store.probation_file)
                pending = self.store.read_pending()
                if pending is not None:
                    self.store.clear_pending()
                    probation = await self._switch(pending) or probation
                started = time.monotonic()
                child = await self._start()
                if probation is not None:
                    healthy, reason = await self._probe(child, probation, started)
                    if self.stopping.is_set():
                        break
                    await self._conclude(child, probation, healthy, reason)
                    if not healthy:
                        continue
                returncode = await self._wait(child)
                if self.stopping.is_set():
                    break
                if self.store.pending_file.exists():
                    crashes = 0
                    continue
                if returncode == 0:
                    logger.info("spore exited cleanly; the supervisor stops too")
                    break
                crashes = crashes + 1 if time.monotonic() - started < 60 else 1
                delay = min(2.0 ** (crashes - 1), MAX_BACKOFF)
                logger.warning("spore exited with code %s; restarting in %.0fs", returncode, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
        finally:
            await self._stop_child()
            with contextlib.suppress(Exception):
                await self.broker.disconnect()
        return 0

    @property
    def _child_file(self) -> Any:
        return self.store.root / "child.json"

    def _remember_child(self, pid: int) -> None:
        """Note the child's pid and start time, so a restarted supervisor can find a child left behind."""
        with contextlib.suppress(psutil.Error):
            write_json(self._child_file, {"pid": pid, "create_time": psutil.Process(pid).create_time()})

    async def _stop_leftover_child(self) -> None:
        """A child of a previous supervisor still running (its supervisor was killed before the parent-death
        signal could be set, or on a system without it) is stopped before a new one starts: one spore per
        node id. The pid counts only with the same start time (a recycled pid is left alone)."""
        noted = read_json(self._child_file)
        if not noted:
            return
        try:
            proc = psutil.Process(int(noted["pid"]))
            if abs(proc.create_time() - float(noted["create_time"])) > 0.01:
                return
        except (psutil.Error, KeyError, TypeError, ValueError):
            return
        logger.warning("stopping spore pid %s left running by a previous supervisor", proc.pid)
        with contextlib.suppress(psutil.Error):
            proc.terminate()
        loop = asyncio.get_running_loop()
        _, alive = await loop.run_in_executor(
            None, functools.partial(psutil.wait_procs, [proc], timeout=self.config.shutdown_grace + 15)
        )
        for leftover in alive:
            with contextlib.suppress(psutil.Error):
                leftover.kill()

    def _resume_probation(self) -> None:
        """After a crash mid-switch, finish pointing ``current`` where the unfinished probation says."""
        probation = read_json(self.store.probation_file)
        if probation is None:
            return
        current = self.store.current()
        wanted = probation.get("to")
        if (current.name if current else None) != wanted:
            target = self.store.release(str(wanted)) if wanted else None
            self.store.set_pointer("current", target)
            logger.warning("resumed an unfinished switch to %s", wanted or "no release")

    def stop(self) -> None:
        self.stopping.set()
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGTERM)

    # --- the child -------------------------------------------------------------------------------------

    async def _start(self) -> asyncio.subprocess.Process:
        release = self.store.current()
        argv = [sys.executable, "-m", "hive_plugin_ota.launch", "--root", str(self.store.root)]
        env = dict(os.environ)
        apps: list[str] = []
        if release is not None:
            argv += ["--release", release.name]
            env["HIVE_CODE_VERSION"] = release.version
            for app in release.apps:
                apps += ["--app", app]
        argv += ["--", *self.hive_args, "spore", *self.spore_args, *apps]
        self.tail.clear()
        self.child = await asyncio.create_subprocess_exec(
            *argv, env=env, stderr=asyncio.subprocess.PIPE,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        self._remember_child(self.child.pid)
        self.child_release = release
        self._pump_task = asyncio.create_task(self._pump(self.child))  # ends with the child's stderr
        logger.info("started spore pid %s on %s", self.child.pid,
                    f"release {release.version} ({release.name})" if release else "no release")
        return self.child

    async def _pump(self, child: asyncio.subprocess.Process) -> None:
        """Copy the child's stderr through, keeping its last lines for failure reports."""
        assert child.stderr is not None
        out = sys.stderr.buffer
        while line := await child.stderr.readline():
            with contextlib.suppress(Exception):
                out.write(line)
                out.flush()
            self.tail.append(line.decode(errors="replace").rstrip())

    async def _wait(self, child: asyncio.subprocess.Process) -> int:
        return await child.wait()

    async def _stop_child(self) -> int | None:
        child = self.child
        if child is None or child.returncode is not None:
            return None if child is None else child.returncode
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(child.wait(), self.config.shutdown_grace + 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            return await child.wait()

    def _exit_reason(self, returncode: int | None) -> str:
        lines = [line for line in self.tail if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line]
        last = (errors or lines or ["no output"])[-1].strip()
        return f"the new process exited with code {returncode} before it was healthy: {last[:500]}"

    # --- switching, probing, committing ----------------------------------------------------------------

    async def _report(self, node_id: str | None, **fields: Any) -> None:
        node = node_id or self.node_id
        if node is None:
            return
        with contextlib.suppress(Exception):
            await report(self.broker.redis, self.keys, node, **fields)

    async def _switch(self, pending: dict[str, Any]) -> dict[str, Any] | None:
        target = self.store.release(str(pending.get("release", "")))
        node = pending.get("node_id") or self.node_id
        if target is None:
            await self._report(node, state="failed", update_id=pending.get("update_id"),
                               reason=f"release {pending.get('release')!r} is not installed; nothing switched")
            return None
        current = self.store.current()
        previous = self.store.previous()
        probation = {
            "kind": pending.get("action", "update"), "to": target.name, "version": target.version,
            "from": current.name if current else None, "from_version": current.version if current else "",
            "from_previous": previous.name if previous else None, "update_id": pending.get("update_id"),
            "node_id": node, "started_at": datetime.now(UTC).isoformat(),
        }
        write_json(self.store.probation_file, probation)  # first: a crash after the switch still knows the way back
        self.store.set_pointer("current", target)
        self.store.set_pointer("previous", current)
        logger.info("switched current to %s (from %s)", target.name, probation["from"])
        await self._report(node, state="probing", target=target.version, update_id=probation["update_id"],
                           reason=None, action=probation["kind"])
        return probation

    async def _probe(self, child: asyncio.subprocess.Process, probation: dict[str, Any],
                     started: float) -> tuple[bool, str]:
        """Heartbeat with the expected version from this child's pid, then an ``ota.probe`` task pinned to it."""
        # Without a release the child shows whatever HIVE_CODE_VERSION it inherits, as this process read it.
        expected = self.child_release.version if self.child_release else self.config.code_version
        deadline = started + self.settings.health_window
        host = socket.gethostname()
        task_id: str | None = None
        while time.monotonic() < deadline and not self.stopping.is_set():
            if child.returncode is not None:
                await asyncio.sleep(0.2)  # let the stderr pump catch the last lines
                return False, self._exit_reason(child.returncode)
            try:
                if task_id is None:
                    node = next((n for n in await self.broker.get_nodes() if n.pid == child.pid and n.host == host),
                                None)
                    if node is not None and node.code_version == expected:
                        self.node_id = node.node_id
                        remaining = max(deadline - time.monotonic(), 1.0)
                        task_id = await self.broker.enqueue_task(
                            PROBE_TASK, {"expect": expected, "release": probation.get("to")},
                            "high_priority", timeout=remaining, max_retries=0, node=node.node_id,
                        )
                else:
                    message = await self.broker.get_task_status(task_id)
                    if message is not None and message.status == TaskStatus.COMPLETED:
                        result = message.result if isinstance(message.result, dict) else {}
                        if result.get("code_version") == expected:
                            return True, ""
                        return False, f"the health probe answered code_version {result.get('code_version')!r}"
                    if message is not None and message.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                        return False, f"the health probe failed: {message.error}"
            except Exception as exc:  # Redis hiccup: keep trying until the window closes
                logger.warning("health check: %s", exc)
            await asyncio.sleep(0.1)
        if task_id is not None:
            with contextlib.suppress(Exception):
                await self.broker.cancel_task(task_id)
        return False, (f"not healthy within {self.settings.health_window:g}s (health_window): "
                       + ("no heartbeat" if task_id is None else "the health probe did not complete"))

    async def _conclude(self, child: asyncio.subprocess.Process, probation: dict[str, Any], healthy: bool,
                        reason: str) -> None:
        node = probation.get("node_id") or self.node_id
        kind = probation.get("kind")
        update_id = probation.get("update_id")
        if healthy:
            with contextlib.suppress(FileNotFoundError):
                self.store.probation_file.unlink()
            if kind == "restore":
                logger.warning("rolled back to %s: %s", probation.get("version"), probation.get("reason"))
                await self._report(node, state="rolled_back", version=probation.get("version"), release=probation["to"],
                                   target=probation.get("failed_version"), update_id=update_id,
                                   reason=probation.get("reason"))
            else:
                logger.info("committed %s", probation.get("version"))
                await self._report(node, state="committed", version=probation.get("version"), release=probation["to"],
                                   target=probation.get("version"), update_id=update_id, reason=None, action=kind)
            removed = self.store.prune(self.settings.keep_releases)
            if removed:
                logger.info("removed old releases %s", ", ".join(removed))
            return
        logger.error("release %s is not healthy: %s", probation.get("version"), reason)
        await self._stop_child()
        if kind == "restore":
            with contextlib.suppress(FileNotFoundError):
                self.store.probation_file.unlink()
            await self._report(node, state="failed", update_id=update_id,
                               reason=f"{probation.get('reason')}; and the previous release is not healthy either: "
                                      f"{reason}")
            return
        if probation.get("to"):
            self.store.mark_failed(str(probation["to"]))
        back = self.store.release(probation["from"]) if probation.get("from") else None
        before = self.store.release(probation["from_previous"]) if probation.get("from_previous") else None
        restore = {
            "kind": "restore", "to": back.name if back else None, "version": back.version if back else "",
            "failed_version": probation.get("version"), "reason": reason, "update_id": update_id, "node_id": node,
            "started_at": datetime.now(UTC).isoformat(),
        }
        write_json(self.store.probation_file, restore)
        self.store.set_pointer("current", back)
        self.store.set_pointer("previous", before)
        logger.warning("switched back to %s", back.name if back else "no release")
