"""``hive doctor``: check a setup from the client's side and say what to fix.

Checks, in order: the settings and ``--app`` modules load, plugins load, Redis answers (address, password,
version), how Redis keeps memory (eviction, expired keys awaiting reclaim), the spores online and the task
types each serves, a nexus leading, and the clocks (this machine's and each spore's, against Redis's
``TIME``). A check is ``ok``, ``warn`` (works, but probably not what you want) or ``fail`` (something will not
work); each non-ok one says what to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import attrs
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .config import HiveConfig
from .connection import redis_client
from .embedded import unreachable
from .errors import HiveError, RedisAuthFailed
from .kernel import Kernel
from .keys import Keys
from .models import NodeInfo
from .redisutil import awaited, texts

__all__ = ["Check", "diagnose"]

#: Clocks further apart than this (seconds) are reported: heartbeats, leases and timeouts compare them.
SKEW_LIMIT = 2.0
#: The oldest Redis the default (streams) engine runs on.
MIN_REDIS = (6, 2)
#: A share of expired keys awaiting Redis's expiry cycle (``expired_stale_perc``) past which the doctor says so.
STALE_LIMIT_PCT = 15.0


@attrs.frozen
class Check:
    name: str
    state: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.state.upper():<4}  {self.name:<8} {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


async def diagnose(config: HiveConfig, *, broken_plugins: Mapping[str, str] | None = None,
                   timeout: float = 3.0) -> list[Check]:
    """Run every check; never raises for what it finds."""
    checks: list[Check] = []
    for name, error in sorted((broken_plugins or {}).items()):
        checks.append(Check("plugins", "fail", f"{name!r} failed to load: {error}",
                            f"reinstall or fix it, or set HIVE_DISABLE_PLUGINS={name} to leave it out"))
    kernel: Kernel | None = None
    try:
        kernel = Kernel(config)
        checks.append(Check("apps", "ok", "task types here: " + (", ".join(sorted(kernel.task_types)) or "none")))
    except HiveError as exc:
        checks.append(Check("apps", "fail", str(exc), "fix the module (or --app/HIVE_APP) named above"))
        try:
            kernel = Kernel(config.evolve(apps=()))
        except HiveError as again:
            checks.append(Check("plugins", "fail", str(again), "fix or uninstall the plugin named above"))
    keys = Keys.from_config(config)
    client = redis_client(config, connect_timeout=timeout, socket_timeout=timeout)
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            problem = unreachable(exc, config.safe_redis_url())
            name = "auth" if isinstance(problem, RedisAuthFailed) else "redis"
            checks.append(Check(name, "fail", str(problem).split("; ")[0], str(problem).split("; ", 1)[-1]))
            return checks
        info: dict[str, Any] = await client.info("server")
        version = str(info.get("redis_version", "?"))
        if config.broker == "streams" and _version(version) < MIN_REDIS:
            checks.append(Check("redis", "fail", f"Redis {version} at {config.safe_redis_url()}",
                                "the streams broker needs Redis 6.2 or newer: upgrade, or set HIVE_BROKER=arq"))
        else:
            checks.append(Check("redis", "ok", f"Redis {version} answers at {config.safe_redis_url()}"))
        checks.append(Check("auth", "ok", "password accepted" if _has_password(config) else "no password needed"))
        checks.append(_memory_check(await client.info("memory"), await client.info("stats")))
        seconds, micros = await client.time()
        redis_now = seconds + micros / 1e6
        local_skew = time.time() - redis_now
        nodes = await _nodes(client, keys)
        checks += _spore_checks(nodes, kernel)
        holder = await client.get(keys.nexus_leader)
        if holder is None:
            checks.append(Check("nexus", "warn", "no nexus holds the leader lease",
                                "run 'hive nexus' (or 'hive up') so zombie, parked and stranded tasks are handled"))
        else:
            checks.append(Check("nexus", "ok", f"{holder.decode(errors='replace')} leads"))
        checks += _clock_checks(local_skew, nodes, redis_now, config)
    finally:
        await client.aclose()
    return checks


def _has_password(config: HiveConfig) -> bool:
    from urllib.parse import urlsplit

    return bool(urlsplit(config.effective_redis_url()).password or config.redis_password)


async def _nodes(client: Redis, keys: Keys) -> list[NodeInfo]:
    from . import wire
    from .errors import WireError

    ids = sorted(texts(await awaited(client.smembers(keys.nodes))))
    raws = await client.mget([keys.node(n) for n in ids]) if ids else []
    nodes = []
    for raw in raws:
        if raw:
            try:
                nodes.append(wire.loads(raw, NodeInfo))
            except WireError:
                continue
    return nodes


def _memory_check(memory: Mapping[str, Any], stats: Mapping[str, Any]) -> Check:
    """Whether Redis may evict the hive's keys, and how many expired keys wait for its expiry cycle
    (``INFO memory`` and ``INFO stats``: no CONFIG, which the hive's ACL users are refused)."""
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    limit = int(memory.get("maxmemory", 0) or 0)
    if limit and policy != "noeviction":
        return Check("memory", "warn",
                     f"Redis evicts keys past maxmemory {memory.get('maxmemory_human', limit)} ({policy}): queued "
                     "tasks, task records, leases and heartbeats can vanish",
                     "set maxmemory-policy noeviction: a full Redis then refuses writes, and the hive says so")
    stale = float(stats.get("expired_stale_perc", 0.0) or 0.0)
    if stale >= STALE_LIMIT_PCT:
        return Check("memory", "warn",
                     f"about {stale:.0f} % of the keys Redis holds have expired and wait for its expiry cycle",
                     "raise active-expire-effort in redis.conf (1 by default, up to 10): at thousands of tasks a "
                     "second 10 kept it near 6 % (README: Redis's expiry effort)")
    bound = f"maxmemory {memory.get('maxmemory_human', limit)}, noeviction" if limit else "no maxmemory"
    return Check("memory", "ok", f"{bound}; {stale:.0f} % of keys expired awaiting reclaim")


def _spore_checks(nodes: list[NodeInfo], kernel: Kernel | None) -> list[Check]:
    if not nodes:
        return [Check("spores", "warn", "no spore online: submitted tasks wait in the queues",
                      "start one: 'hive spore --app MODULE' (or 'hive up --app MODULE')")]
    checks = [
        Check("spores", "ok", f"{n.node_name} on {n.host}: {n.active_tasks}/{n.concurrency} busy"
                              f"{', paused' if n.paused else ''}; serves {', '.join(n.task_types) or 'nothing'}")
        for n in sorted(nodes, key=lambda n: n.node_name)
    ]
    served = {t for n in nodes for t in n.task_types}
    local = set(kernel.task_types) if kernel is not None else set()
    unserved = sorted(local - served)
    if unserved:
        checks.append(Check("spores", "warn", f"no spore online serves {', '.join(unserved)}",
                            "start spores with the module that defines them (--app)"))
    return checks


def _clock_checks(local_skew: float, nodes: list[NodeInfo], redis_now: float, config: HiveConfig) -> list[Check]:
    checks = []
    if abs(local_skew) > SKEW_LIMIT:
        checks.append(Check("clock", "warn", f"this machine's clock is {local_skew:+.1f}s off Redis's",
                            "synchronise clocks (NTP, e.g. systemd-timesyncd or chrony)"))
    # A beat is at most one heartbeat interval old; anything beyond that (or in the future) is clock skew.
    for node in nodes:
        beat = node.last_heartbeat if node.last_heartbeat.tzinfo else node.last_heartbeat.replace(tzinfo=UTC)
        age = redis_now - beat.timestamp()
        skew = -age if age < 0 else max(age - config.heartbeat_interval, 0.0)
        if skew > SKEW_LIMIT:
            direction = "ahead of" if age < 0 else "behind"
            checks.append(Check("clock", "warn", f"{node.node_name}'s clock is about {skew:.1f}s {direction} Redis's",
                                f"synchronise the clock on {node.host} (NTP)"))
    if not checks:
        checks.append(Check("clock", "ok", f"clocks agree within {SKEW_LIMIT:g}s ({len(nodes)} spore(s) and this "
                                           "machine, against Redis's TIME)"))
    return checks


def run_doctor(config: HiveConfig, broken_plugins: Mapping[str, str] | None = None) -> list[Check]:
    return asyncio.run(diagnose(config, broken_plugins=broken_plugins))
