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

from .broker import MessageBroker
from .broker.retention import trim
from .errors import FatalCondition
from .foreman import ForemanAgent
from .kernel import Kernel
from .outage import RedisLink, is_outage, try_twice
from .redisutil import raise_if_cancelling
from .schedules import Scheduler, collect_schedules

logger = logging.getLogger(__name__)


class Watchdog:
    """Finds zombie tasks and stranded work every ``HIVE_WATCHDOG_INTERVAL`` seconds, when leader."""

    def __init__(self, broker: Any, *, interval: float | None = None, link: RedisLink | None = None) -> None:
        self.broker = broker
        self.config = broker.kernel.config
        self.interval = interval or self.config.watchdog_interval
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.is_leader = False
        self.link = link or RedisLink(logger, auth_limit=self.config.redis_auth_limit)
        #: Why the watchdog gave up (a named fatal condition), else ``None``.
        self.fatal: str | None = None
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
        """Give the lease back if this process holds it, so a standby leads at once (else it lapses after three
        intervals)."""
        await try_twice(self._release_lease, f"give the lease of nexus {self.identity} back", logger)

    async def _release_lease(self) -> None:
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
        trimmed = await trim(self.broker)
        self.stats["trimmed"] = self.stats.get("trimmed", 0) + sum(trimmed.values())
        for label, count in done.items():
            self.stats[label] = self.stats.get(label, 0) + count
        return done

    async def _online(self) -> set[str]:
        return {n.node_id for n in await self.broker.get_nodes()}

    async def run(self) -> None:
        """Sweep every interval until cancelled. While Redis is away the sweep is tried again with back-off
        (one log line when the outage begins, one when it ends); a sweep failing otherwise is logged and the
        next one runs as usual. Returns only on a named fatal condition (``self.fatal``)."""
        backoff = self.link.backoff()
        while True:
            raise_if_cancelling()
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    logger.exception("watchdog sweep failed")
                else:
                    self.is_leader = False
                    self.link.lost(exc, "watchdog")
                    self.fatal = self.link.fatal_reason()
                    if self.fatal:
                        return
                    await asyncio.sleep(min(backoff.next_delay(), self.interval))
                    continue
            else:
                self.link.back()
            backoff.reset()
            await asyncio.sleep(self.interval)


class Nexus:
    """``hive nexus``: Foreman (cluster view, balancing) and the watchdog in one process."""

    def __init__(self, kernel: Kernel, *, monitor: bool | None = None) -> None:
        self.kernel = kernel
        self.broker = MessageBroker(kernel)
        self.link = RedisLink(logger, auth_limit=kernel.config.redis_auth_limit)
        self.foreman = ForemanAgent(self.broker, link=self.link)
        self.watchdog = Watchdog(self.broker, link=self.link)
        #: Periodic tasks (``@task(schedule=...)`` and ``[schedules.NAME]``), fired while this nexus leads.
        self.scheduler = Scheduler(
            self.broker,
            collect_schedules(kernel.task_types.values(), kernel.config.schedules),
            identity=self.watchdog.identity,
        )
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
        scheduler = asyncio.create_task(self.scheduler.run(lambda: self.watchdog.is_leader), name="hive-scheduler")
        logger.info("nexus %s running: watchdog every %ss, %d schedule(s)", self.watchdog.identity,
                    self.watchdog.interval, len(self.scheduler.schedules))
        try:
            if self.serve_monitor:
                await self._start_monitor()
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait([stopper, sweeper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
        finally:
            if self.monitor is not None:
                with contextlib.suppress(Exception):
                    await self.monitor.stop()
            sweeper.cancel()
            scheduler.cancel()
            await asyncio.gather(sweeper, scheduler, return_exceptions=True)
            await self.foreman.stop()
            await self.watchdog.release_lease()
            await self.broker.disconnect()
        if self.watchdog.fatal:
            logger.error("nexus stopped on a fatal condition: %s", self.watchdog.fatal)
            raise FatalCondition(self.watchdog.fatal)

    async def _start_monitor(self) -> None:
        """Serve the Hive Monitor; a failure to serve it (a port in use...) is a warning, never the nexus's end."""
        try:
            from .monitor import MonitorServer

            server = MonitorServer(self.broker, watchdog=self.watchdog)
            if await server.start():
                self.monitor = server
        except Exception:
            logger.exception("Hive Monitor not served")
