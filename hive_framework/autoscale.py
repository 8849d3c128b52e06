"""The local autoscaler (``hive up --autoscale MIN:MAX``): spore processes on one machine, no Kubernetes.

Every ``interval`` seconds it reads the backlog (:mod:`hive_framework.backlog`) and the spores' heartbeats,
asks the ``autoscale_decision`` hook for the number of spores to run (:func:`default_policy` when no plugin
answers), and starts spore processes or stops idle ones with SIGTERM, the spore's graceful stop: it takes
no new work, finishes what it runs (``HIVE_SHUTDOWN_GRACE``) and hands the rest back, so no task is lost or
run twice. Its state and decisions go to Redis (``{prefix}:autoscalers``), where the Hive Monitor's
``/metrics`` reads them (``hive_autoscale_*``).

The default policy, with ``S`` spores running:

- **grow** when the waiting tasks exceed ``backlog_per_spore * S`` or the oldest has waited longer than
  ``max_wait`` seconds: to ``ceil(waiting / backlog_per_spore)`` spores, and at least ``S + 1``;
- **shrink** when nothing waits: by the number of spores idle (no running task in their heartbeat) for at
  least ``cooldown`` seconds, the longest idle stopped first;
- always within ``MIN..MAX``.

Reaction time: a burst is seen within one ``interval`` and the spores it asks for beat once their process
has started (about a second of Python start-up each); a spore is stopped no sooner than ``cooldown``
seconds after its last task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import attrs

from .backlog import STATE_TTL, Backlog, read_backlog, state_key
from .broker import MessageBroker
from .config import HiveConfig
from .kernel import Kernel
from .redisutil import raise_if_cancelling
from .supervisor import LocalCluster

logger = logging.getLogger(__name__)



def parse_bounds(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``; raises ``ValueError`` with the reason (0 <= MIN <= MAX, MAX >= 1)."""
    low, sep, high = text.partition(":")
    if not sep:
        raise ValueError(f"expected MIN:MAX, like 1:8, got {text!r}")
    try:
        lo, hi = int(low.strip()), int(high.strip())
    except ValueError:
        raise ValueError(f"MIN and MAX must be whole numbers, got {text!r}") from None
    if lo < 0 or hi < 1 or lo > hi:
        raise ValueError(f"need 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return lo, hi


@attrs.frozen(kw_only=True)
class ScalePolicy:
    """The default policy's thresholds (see the module docstring)."""

    min_spores: int
    max_spores: int
    backlog_per_spore: int = 20
    max_wait: float = 5.0
    cooldown: float = 30.0
    interval: float = 1.0


@attrs.frozen(kw_only=True)
class ScaleState:
    """What a policy decides on, one tick."""

    backlog: Backlog
    spores: int
    #: Seconds each running spore (by name) has had no task; 0 for a busy one or one not beating yet.
    idle_for: dict[str, float]
    policy: ScalePolicy


def default_policy(state: ScaleState) -> int:
    """The wanted number of spores (see the module docstring for the rules)."""
    policy, spores, backlog = state.policy, state.spores, state.backlog
    want = spores
    crowded = backlog.total > policy.backlog_per_spore * spores
    if backlog.total and (crowded or backlog.oldest_age > policy.max_wait):
        want = max(spores + 1, math.ceil(backlog.total / policy.backlog_per_spore))
    elif not backlog.total:
        idle = sum(1 for seconds in state.idle_for.values() if seconds >= policy.cooldown)
        want = spores - idle
    return max(policy.min_spores, min(policy.max_spores, want))


class AutoscaledCluster(LocalCluster):
    """:class:`~hive_framework.supervisor.LocalCluster` whose spores can be added and stopped one by one."""

    def __enter__(self) -> AutoscaledCluster:
        super().__enter__()
        self.counter = 0
        self.spore_procs: dict[str, subprocess.Popen[bytes]] = {}
        # LocalCluster starts its spores first, named local-<n>-<pid>; the nexus (if any) comes after them.
        for index, proc in enumerate(self.procs[: self.spores]):
            self.spore_procs[f"local-{index + 1}-{os.getpid()}"] = proc
        self.counter = self.spores
        return self

    def add_spore(self) -> str:
        """Start one more spore process (the same command line as LocalCluster's); returns its name."""
        self.counter += 1
        name = f"local-{self.counter}-{os.getpid()}"
        argv = [sys.executable, "-m", "hive_framework", "--log-level", "warning" if self.quiet else "info",
                "spore", "--name", name]
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        for app in self.apps:
            argv += ["--app", app]
        proc = subprocess.Popen(argv, env={**os.environ, **self.extra_env, "REDIS_URL": self.url})
        self.procs.append(proc)
        self.spore_procs[name] = proc
        return name

    def stop_spore(self, name: str) -> None:
        """SIGTERM: the spore's graceful stop. It is reaped by :meth:`reap` once it has exited."""
        proc = self.spore_procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def reap(self) -> list[str]:
        """Forget spores whose process has exited (stopped or crashed); returns their names."""
        gone = [name for name, proc in self.spore_procs.items() if proc.poll() is not None]
        for name in gone:
            del self.spore_procs[name]
        self.procs = [p for p in self.procs if p.poll() is None]
        return gone


class Autoscaler:
    """Runs the loop: read, decide (hook or default), act, publish."""

    def __init__(self, cluster: AutoscaledCluster, policy: ScalePolicy, *, kernel: Kernel | None = None) -> None:
        self.cluster = cluster
        self.policy = policy
        config: HiveConfig = cluster.config.evolve(redis_url=cluster.url)
        self.kernel = kernel or Kernel(config)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.idle_since: dict[str, float] = {}
        self.stopping: dict[str, float] = {}
        self.decisions = {"up": 0, "down": 0}
        self.last: dict[str, Any] = {"action": "none", "reason": "", "at": 0.0}
        #: Set by Ctrl-C or SIGTERM while :meth:`run` runs: the loop ends and no tick starts or stops a spore.
        self.stop = asyncio.Event()

    async def tick(self, broker: Any) -> int:
        """One pass; returns the number of spores wanted."""
        self.cluster.reap()
        backlog = await read_backlog(broker)
        now = time.time()
        active = {n.node_name: n.active_tasks for n in await broker.get_nodes()}
        for name in self.cluster.spore_procs:
            if active.get(name, 1) > 0:  # busy, or not beating yet: not idle
                self.idle_since.pop(name, None)
            else:
                self.idle_since.setdefault(name, now)
        running = list(self.cluster.spore_procs)
        state = ScaleState(
            backlog=backlog, spores=len(running), policy=self.policy,
            idle_for={n: now - self.idle_since[n] if n in self.idle_since else 0.0 for n in running},
        )
        answer = self.kernel.pm.hook.autoscale_decision(state=state, config=self.kernel.config)
        want = default_policy(state) if answer is None else int(answer)
        want = max(self.policy.min_spores, min(self.policy.max_spores, want))
        reason = f"{backlog.total} waiting, oldest {backlog.oldest_age:.1f}s, {len(running)} spore(s)"
        if self.stop.is_set():
            return want  # stopping: the spores that left on Ctrl-C are not replaced
        if want > len(running):
            started = [self.cluster.add_spore() for _ in range(want - len(running))]
            self._decided("up", f"{reason}: started {', '.join(started)}", len(started))
        elif want < len(running):
            idle = sorted(running, key=lambda n: -state.idle_for[n])[: len(running) - want]
            for name in idle:
                self.cluster.stop_spore(name)
                self.idle_since.pop(name, None)
            self._decided("down", f"{reason}: stopped {', '.join(idle)} (idle)", len(idle))
        await self.publish(broker, backlog, want)
        return want

    def _decided(self, action: str, reason: str, count: int) -> None:
        self.decisions[action] += count
        self.last = {"action": action, "reason": reason, "at": time.time()}
        logger.info("autoscale %s: %s", action, reason)

    async def publish(self, broker: Any, backlog: Backlog, want: int) -> None:
        state = {
            "spores": len(self.cluster.spore_procs), "target": want, "min": self.policy.min_spores,
            "max": self.policy.max_spores, "decisions": self.decisions, "last": self.last,
            "waiting": backlog.total, "oldest_age": backlog.oldest_age, "updated_at": time.time(),
        }
        key = state_key(broker)
        async with broker.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, self.identity, json.dumps(state))
            pipe.expire(key, int(STATE_TTL))
            await pipe.execute()

    async def run(self) -> None:
        """Tick every ``policy.interval`` seconds until Ctrl-C or SIGTERM (or a cancel); a failed tick is logged.

        The signals set :attr:`stop`, which the loop reads each turn, rather than cancel it: redis-py can swallow
        a cancel that lands in one of its reads (the broker's connect included), and a ``hive up`` that lost its
        Ctrl-C that way scaled on, replacing the spores the same Ctrl-C had stopped, until it was killed. A
        second signal cancels a tick in progress."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_signal() -> None:
            if self.stop.is_set() and main is not None:
                main.cancel()
            self.stop.set()

        handled: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, on_signal)
                handled[sig] = previous
        try:
            async with MessageBroker(self.kernel) as broker:
                try:
                    while not self.stop.is_set():
                        try:
                            await self.tick(broker)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            logger.exception("autoscale tick failed")
                        raise_if_cancelling()  # cancelled by its caller, and the cancel swallowed mid-tick
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.policy.interval):
                                await self.stop.wait()
                finally:
                    redis: Any = broker.redis
                    await redis.hdel(state_key(broker), self.identity)
        finally:
            for sig, previous in handled.items():
                loop.remove_signal_handler(sig)
                if previous is not None:  # as it was before (``hive up`` maps SIGTERM to Ctrl-C's path)
                    signal.signal(sig, previous)


def run_autoscaled(cluster: AutoscaledCluster, policy: ScalePolicy) -> None:
    """Run the autoscaler over ``cluster`` until Ctrl-C or SIGTERM (for ``hive up --autoscale``); either ends in
    ``KeyboardInterrupt``, the way out of ``hive up`` that stops the spores."""
    scaler = Autoscaler(cluster, policy)
    asyncio.run(scaler.run())
    if scaler.stop.is_set():
        raise KeyboardInterrupt
