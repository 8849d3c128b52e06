"""``hive health``: one check a container engine or Kubernetes probe runs, exit status 0 when healthy.

Healthy means Redis answers, and for the process the probe stands for:

- a spore (``--spore NAME``, or ``--spore-here`` for the spore(s) on this host, which is what a container
  knows about itself): its heartbeat key exists and its last beat is younger than ``max_age`` seconds
  (default three heartbeat intervals, the key's own TTL);
- a nexus (``--nexus``): a nexus holds the leader lease. The lease is renewed every watchdog interval and
  lapses after three, so it is the nexus's heartbeat; a standby nexus passes while its leader lives and
  takes the lease over within one interval when the leader dies, so the probe fails only when no nexus
  in the hive has been alive for three intervals.

The check never writes to Redis and never raises: :func:`check_health` returns a :class:`HealthReport`.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import attrs

from .config import HiveConfig
from .connection import describe_error, redis_client
from .errors import WireError
from .keys import Keys
from .models import NodeInfo
from .redisutil import read_or_empty, texts
from .wire import loads


@attrs.frozen
class HealthReport:
    """The outcome: ``ok`` and one line per check (``reasons``), failures first."""

    ok: bool
    reasons: tuple[str, ...]

    def text(self) -> str:
        return "; ".join(self.reasons) or "healthy"


def _age(node: NodeInfo, now: datetime) -> float:
    beat = node.last_heartbeat if node.last_heartbeat.tzinfo else node.last_heartbeat.replace(tzinfo=UTC)
    return (now - beat).total_seconds()


async def _check(
    config: HiveConfig, spore: str | None, spore_here: bool, nexus: bool, max_age: float | None, timeout: float
) -> HealthReport:
    keys = Keys.from_config(config)
    client = redis_client(config, connect_timeout=timeout, socket_timeout=timeout)
    fails: list[str] = []
    notes: list[str] = []
    try:
        try:
            await client.ping()
        except Exception as exc:
            return HealthReport(False, (f"Redis at {config.safe_redis_url()} does not answer: {describe_error(exc)}",))
        notes.append(f"Redis at {config.safe_redis_url()} answers")
        limit = max_age if max_age is not None else max(config.heartbeat_interval * 3, 1.0)
        if spore is not None or spore_here:
            members = await read_or_empty(client.smembers(keys.nodes), set(), keys.nodes)
            ids = sorted(texts(members))
            raws = await client.mget([keys.node(n) for n in ids]) if ids else []
            # after the read: a beat that landed while it ran is not younger than now (ages never negative)
            now = datetime.now(UTC)
            nodes = []
            for raw in raws:
                if raw:
                    try:
                        nodes.append(loads(raw, NodeInfo))
                    except WireError:
                        continue  # a node key from another version: not this spore's beat
            host = socket.gethostname()
            mine = [
                n for n in nodes
                if (spore is not None and spore in (n.node_id, n.node_name)) or (spore_here and n.host == host)
            ]
            what = f"spore {spore!r}" if spore is not None else f"a spore on host {host!r}"
            if not mine:
                fails.append(f"{what} has no live heartbeat")
            else:
                freshest = min(_age(n, now) for n in mine)
                if freshest > limit:
                    fails.append(f"{what} last beat {freshest:.1f}s ago (limit {limit:g}s)")
                else:
                    notes.append(f"{what} beat {freshest:.1f}s ago")
        if nexus:
            holder = await client.get(keys.nexus_leader)
            if holder is None:
                fails.append("no nexus holds the leader lease (none has renewed it for three watchdog intervals)")
            else:
                notes.append(f"nexus {holder.decode(errors='replace')} leads")
    finally:
        await client.aclose()
    return HealthReport(not fails, (*fails, *notes))


def check_health(
    config: HiveConfig,
    *,
    spore: str | None = None,
    spore_here: bool = False,
    nexus: bool = False,
    max_age: float | None = None,
    timeout: float = 3.0,
) -> HealthReport:
    """Run the checks (see the module docstring) within about ``timeout`` seconds per Redis call."""
    return asyncio.run(_check(config, spore, spore_here, nexus, max_age, timeout))
