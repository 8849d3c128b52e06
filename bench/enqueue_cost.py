#!/usr/bin/env python3
"""What one enqueue costs Redis: commands, bytes each way and memory per queued job, hive beside its peers.

    python bench/enqueue_cost.py [--n 2000]

On a private ``redis-server`` (emptied between systems), one client enqueues ``--n`` no-op jobs one call at a
time with nothing consuming them, after 50 untimed ones (connection set-up, script loading). The figures are
deltas of the server's own counters (``INFO stats``, ``INFO commandstats``, ``used_memory``) divided by
``--n``, so they count what reached Redis whatever the client library does. Peers are measured when
installed (Dramatiq, ARQ, RQ, Celery: ``pip install "dramatiq[redis]" arq rq "celery[redis]"``); a missing
one is listed as skipped. Issue 18's goal: a single ``submit`` costs no more Redis work than Dramatiq's
enqueue. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.support import PrivateRedis, log, save_result  # noqa: E402
from hive_framework import Hive, HiveConfig, Kernel  # noqa: E402

WARMUP = 50


def counters(client: redis.Redis) -> dict[str, Any]:
    """The server's command, byte and memory counters, and calls per command."""
    stats = client.info("stats")
    memory = client.info("memory")
    per_command = {name.removeprefix("cmdstat_"): int(row["calls"])
                   for name, row in client.info("commandstats").items()}
    return {"commands": int(stats["total_commands_processed"]), "in": int(stats["total_net_input_bytes"]),
            "out": int(stats["total_net_output_bytes"]), "memory": int(memory["used_memory"]),
            "per_command": per_command}


def deltas(client: redis.Redis, between: Callable[[], None]) -> dict[str, Any]:
    """The counters' growth across ``between()``."""
    before = counters(client)
    between()
    after = counters(client)
    out = {key: after[key] - before[key] for key in ("commands", "in", "out", "memory")}
    out["per_command"] = {name: calls - before["per_command"].get(name, 0)
                          for name, calls in after["per_command"].items()}
    return out


def measure(url: str, n: int, enqueue: Callable[[int], Any]) -> dict[str, Any]:
    """Run ``enqueue(i)`` for the warm-up then ``n`` times; the counters' growth (less what reading them costs,
    taken from a pair of readings with nothing between) divided by ``n``."""
    client = redis.Redis.from_url(url)
    for i in range(WARMUP):
        enqueue(i)
    idle = deltas(client, lambda: None)

    def batch() -> None:
        for i in range(WARMUP, WARMUP + n):
            enqueue(i)

    used = deltas(client, batch)
    client.close()
    calls = {name: c - idle["per_command"].get(name, 0) for name, c in used["per_command"].items()}
    return {
        "commands": (used["commands"] - idle["commands"]) / n,
        "bytes_in": (used["in"] - idle["in"]) / n,
        "bytes_out": (used["out"] - idle["out"]) / n,
        "memory": used["memory"] / n,
        "by_command": {name: round(c / n, 2) for name, c in sorted(calls.items()) if round(c / n, 2) > 0},
    }


def run_async(factory: Callable[[], Awaitable[Any]]) -> Callable[[int], Any]:
    """An async system's set-up and enqueue driven from plain calls, on one event loop kept for the run."""
    loop = asyncio.new_event_loop()
    enqueue = loop.run_until_complete(factory())

    def call(i: int) -> Any:
        return loop.run_until_complete(enqueue(i))

    return call


def hive(url: str, broker: str) -> Callable[[int], Any]:
    # hive's defaults (key prefix ``venom``, as short as the peers' own), on the private server
    config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None, redis_url=url, broker=broker)

    async def setup() -> Callable[[int], Awaitable[Any]]:
        client = Hive(Kernel(config, apps=["bench.jobs"], load_entry_points=False))
        await client.__aenter__()
        return lambda i: client.submit("bench.noop", {"i": i})

    return run_async(setup)


def dramatiq_(url: str) -> Callable[[int], Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=url))

    @dramatiq.actor(queue_name="default")
    def noop(i: int) -> None: ...

    return noop.send


def arq_(url: str) -> Callable[[int], Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def setup() -> Callable[[int], Awaitable[Any]]:
        pool = await create_pool(RedisSettings.from_dsn(url))
        return lambda i: pool.enqueue_job("noop", i)

    return run_async(setup)


def rq_(url: str) -> Callable[[int], Any]:
    from rq import Queue

    queue = Queue(connection=redis.Redis.from_url(url))
    return lambda i: queue.enqueue("bench.jobs.noop", i)


def celery_(url: str) -> Callable[[int], Any]:
    from celery import Celery

    app = Celery("bench", broker=url)
    return lambda i: app.send_task("noop", args=[i])


SYSTEMS: dict[str, tuple[str | None, Callable[[str], Callable[[int], Any]]]] = {
    "hive-streams": (None, lambda url: hive(url, "streams")),
    "hive-arq": (None, lambda url: hive(url, "arq")),
    "dramatiq": ("dramatiq", dramatiq_),
    "arq": ("arq", arq_),
    "rq": ("rq", rq_),
    "celery": ("celery", celery_),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    args = parser.parse_args()
    private = PrivateRedis()
    rows: dict[str, dict[str, Any]] = {}
    try:
        admin = redis.Redis.from_url(private.url)
        for name in args.systems.split(","):
            module, build = SYSTEMS[name]
            if module is not None and importlib.util.find_spec(module) is None:
                log(f"{name}: not installed, skipped")
                continue
            admin.flushall()
            admin.config_resetstat()
            log(f"{name}: {args.n} enqueues")
            started = time.perf_counter()
            rows[name] = measure(private.url, args.n, build(private.url))
            rows[name]["wall_us"] = (time.perf_counter() - started) / (args.n + WARMUP) * 1e6
        admin.close()
    finally:
        private.stop()
    lines = table(args.n, rows)
    save_result(f"enqueue-cost-{time.strftime('%Y%m%dT%H%M%S')}", {"n": args.n, "rows": rows, "table_md": lines})
    print(lines)


def table(n: int, rows: dict[str, dict[str, Any]]) -> str:
    """The figures as a Markdown table, with each system's command count as a ratio to Dramatiq's."""
    base = rows.get("dramatiq")
    out = [
        f"| per enqueue ({n:,} one at a time) | commands | bytes to Redis | bytes from Redis | Redis memory "
        "per queued job, B | commands (calls per enqueue) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ratio = f" ({row['commands'] / base['commands']:.2f}x Dramatiq)" if base and name != "dramatiq" else ""
        detail = ", ".join(f"{cmd} {calls:g}" for cmd, calls in row["by_command"].items())
        out.append(f"| {name} | {row['commands']:.2f}{ratio} | {row['bytes_in']:.0f} | {row['bytes_out']:.0f} | "
                   f"{row['memory']:.0f} | {detail} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
