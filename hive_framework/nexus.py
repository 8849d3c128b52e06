"""The nexus: the master process — Foreman's cluster view plus the watchdog.

Several nexus processes may run; a Redis lease makes one of them the leader, and only the leader's
watchdog acts. Each action is also a compare-and-set on the task, so even two leaders in a hand-over
never retry the same zombie twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from typing import Any

from redis.exceptions import WatchError

from .default_plugins.foreman import ForemanAgent
from .kernel import Kernel

logger = logging.getLogger(__name__)


class Watchdog:
    """Finds zombie tasks and stranded work every ``HIVE_WATCHDOG_INTERVAL`` seconds, when leader."""

    def __init__(self, broker: Any, *, interval: float | None = None) -> None:
        self.broker = broker
        self.config = broker.kernel.config
        self.interval = interval or self.config.watchdog_interval
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.is_leader = False
        self.stats = {"zombies_requeued": 0, "zombies_failed": 0, "placed": 0, "expired": 0, "rerouted": 0}

    async def hold_lease(self) -> bool:
        """Take or renew the leader lease (three intervals long); ``True`` while this process leads."""
        redis = self.broker.redis
        key = self.broker.keys.nexus_leader
        ttl_ms = int(self.interval * 3 * 1000)
        if await redis.set(key, self.identity, nx=True, px=ttl_ms):
            return True
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            holder = await pipe.get(key)
            if holder is None or holder.decode() != self.identity:
                return False
            pipe.multi()
            pipe.pexpire(key, ttl_ms)
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def release_lease(self) -> None:
        redis = self.broker.redis
        key = self.broker.keys.nexus_leader
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            holder = await pipe.get(key)
            if holder is not None and holder.decode() == self.identity:
                pipe.multi()
                pipe.delete(key)
                with contextlib.suppress(WatchError):
                    await pipe.execute()

    async def sweep(self) -> dict[str, int]:
        """One pass, if leader: re-run or fail zombies, place parked tasks, re-route dead nodes' queues."""
        self.is_leader = await self.hold_lease()
        if not self.is_leader:
            return {}
        done: dict[str, int] = {}
        for zombie in await self.broker.detect_zombie_tasks():
            node = zombie.assigned_node
            reason = f"node {node} stopped beating" if node not in await self._online() else (
                f"running longer than HIVE_ZOMBIE_TASK_TIMEOUT={self.config.zombie_task_timeout:g}s"
            )
            outcome = await self.broker.requeue_zombie(zombie, reason)
            if outcome is not None:
                label = "zombies_failed" if outcome == "failed" else "zombies_requeued"
                done[label] = done.get(label, 0) + 1
                logger.warning("zombie task %s (%s): %s", zombie.task_id, reason, outcome)
        for label, count in (await self.broker.reroute_stranded()).items():
            if count:
                done[label] = done.get(label, 0) + count
        for label, count in done.items():
            self.stats[label] = self.stats.get(label, 0) + count
        return done

    async def _online(self) -> set[str]:
        return {n.node_id for n in await self.broker.get_nodes()}

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watchdog sweep failed")
            await asyncio.sleep(self.interval)


class Nexus:
    """``hive nexus``: Foreman (cluster view, balancing) and the watchdog in one process."""

    def __init__(self, kernel: Kernel, *, monitor: bool | None = None) -> None:
        self.kernel = kernel
        self.broker = kernel.create_broker()
        self.foreman = ForemanAgent(self.broker)
        self.watchdog = Watchdog(self.broker)
        #: Serve the Hive Monitor (``HIVE_MONITOR``, default on); the server once it listens.
        self.serve_monitor = kernel.config.monitor if monitor is None else monitor
        self.monitor: Any = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        await self.broker.connect()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        await self.foreman.start()
        sweeper = asyncio.create_task(self.watchdog.run(), name="hive-watchdog")
        logger.info("nexus %s running: watchdog every %ss", self.watchdog.identity, self.watchdog.interval)
        try:
            if self.serve_monitor:
                await self._start_monitor()
            await self._stop.wait()
        finally:
            if self.monitor is not None:
                with contextlib.suppress(Exception):
                    await self.monitor.stop()
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await self.foreman.stop()
            with contextlib.suppress(Exception):
                await self.watchdog.release_lease()
            await self.broker.disconnect()

    async def _start_monitor(self) -> None:
        """Serve the Hive Monitor; a failure to serve it (a port in use...) is a warning, never the nexus's end."""
        try:
            from .monitor import MonitorServer

            server = MonitorServer(self.broker, watchdog=self.watchdog)
            if await server.start():
                self.monitor = server
        except Exception:
            logger.exception("Hive Monitor not served")
