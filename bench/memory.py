#!/usr/bin/env python3
"""Redis memory per finished task, and whether it comes back down once the results expire.

    python bench/memory.py [--n 1000000] [--ttl 60] [--spores 2] [--broker streams|arq] [--expire-effort N]
                           [--collect] [--json]

On a private ``redis-server`` (no persistence): pushes N tiny tasks (``bench.noop``) in batches of 1,000
while spores (real processes) run them, and prints Redis ``used_memory`` (and the key count) on the empty
server, once the spores are up (the idle hive), at 25 %, 50 %, 100 % of the tasks finished, then after
``HIVE_RESULT_TTL`` (``--ttl``) passed and a nexus swept. The figure per task is (memory at 100 % - the
empty server) / the finished tasks still kept then (all N when the run is shorter than the TTL; with a
shorter TTL the oldest have expired and the figure is of the steady window); "after TTL" is compared with
the idle hive. ``--collect`` submits each batch as a map whose results are collected with ``forget=True``
(8 batches in flight): the figure per task is then what each task added between the 25 % and the 100 %
marks, less the connections' buffers, the script cache and the keyspace tables (and, beside it, (memory at
100 % - the idle hive) / N), what a task costs once its result is collected (run it with a TTL longer than
the run). ``--expire-effort`` sets the
server's ``active-expire-effort`` (1, Redis's default, to 10): how hard its expiry cycle works to reclaim
expired keys no client reads. Nothing is asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.support import Namespace, Workers, log, on_private_redis, spore_argvs, spore_env  # noqa: E402
from hive_framework import HiveConfig, TaskSpec  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402
from hive_framework.nexus import Watchdog  # noqa: E402


async def measure(args: argparse.Namespace, redis_url: str, log_dir: Path) -> dict[str, Any]:
    ns = Namespace(time.strftime("%Y%m%d%H%M%S"))
    # hive's own key prefix and queue names, as a user has them (the server is this run's alone): a bench
    # namespace would add its ~40 characters to every task's key
    settings = {} if args.broker is None else {"broker": args.broker}
    config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None, redis_url=redis_url, concurrency=50,
                             result_ttl=float(args.ttl), **settings)
    env = spore_env(config, ns.counter)
    hive = await Hive(Kernel(config, apps=["bench.jobs"])).open()
    redis = hive.broker.redis
    if args.expire_effort is not None:
        await redis.config_set("active-expire-effort", args.expire_effort)

    async def count_keys(pattern: str) -> int:
        return sum([1 async for _ in redis.scan_iter(match=pattern, count=10_000)])

    async def sample(label: str) -> dict[str, Any]:
        info = await redis.info("memory")
        stats = await redis.memory_stats()
        row: dict[str, Any] = {"at": label, "used_memory": int(info["used_memory"]), "keys": int(await redis.dbsize()),
               # the task records kept (every task pushed has finished when a row is taken)
               "records_kept": await count_keys(hive.broker.keys.task("*")),
               # the server's own memory that no key holds: connections' buffers, the Lua script cache and the
               # keyspace's hash tables (sized for the most keys seen; Redis shrinks them later, in its cron)
               "clients": int(stats["clients.normal"]), "lua_caches": int(stats["lua.caches"]),
               "tables": sum(int(v.get("overhead.hashtable.main", 0)) + int(v.get("overhead.hashtable.expires", 0))
                             for k, v in stats.items() if k.startswith("db.") and isinstance(v, dict))}
        log(f"{label:>14}: used_memory {row['used_memory'] / 2**20:8.2f} MiB, keys {row['keys']:>9,}, "
            f"finished tasks kept {row['records_kept']:>9,}, client buffers {row['clients'] / 2**20:.2f} MiB, "
            f"script cache {row['lua_caches'] / 2**10:.0f} KiB, keyspace tables {row['tables'] / 2**20:.2f} MiB")
        return row

    async def left_over() -> dict[str, int]:
        """The keys left, by kind (the name with ids cut off), with their MEMORY USAGE summed."""
        kinds: dict[str, int] = {}
        async for key in redis.scan_iter(count=1000):
            name = key.decode(errors="replace").removeprefix(config.key_prefix + ":")
            kind = ":".join(part for part in name.split(":") if not any(c.isdigit() for c in part)) or name
            kinds[kind] = kinds.get(kind, 0) + int(await redis.memory_usage(key, samples=0) or 0)
        return dict(sorted(kinds.items(), key=lambda item: -item[1]))

    rows = [await sample("baseline")]
    spores = Workers("spores", spore_argvs(args.spores, 50, "mem"), env, log_dir)
    try:
        while len(await hive.broker.get_nodes()) < args.spores:
            spores.check_alive()
            await asyncio.sleep(0.2)
        rows.append(await sample("idle hive"))
        idle_keys = await left_over()
        marks = [args.n // 4, args.n // 2, args.n]
        pushed = 0
        started = time.perf_counter()
        finished = 0
        in_flight = asyncio.Semaphore(8)

        async def collected(batch: int) -> None:
            async with in_flight:
                await hive.map("bench.noop", [{}] * batch, forget=True)

        for mark in marks:
            maps = []
            while pushed < mark:
                batch = min(1000, mark - pushed)
                if args.collect:
                    maps.append(asyncio.create_task(collected(batch)))
                else:
                    await hive.submit_many([TaskSpec(task_type="bench.noop", payload={}) for _ in range(batch)])
                pushed += batch
            await asyncio.gather(*maps)
            while finished < mark:  # the spores drain what was pushed
                spores.check_alive()
                finished = int(await redis.get(ns.counter) or 0)  # each bench.noop counts itself
                await asyncio.sleep(0.2)
            rows.append(await sample(f"{mark:,} done"))
        elapsed = time.perf_counter() - started
        log(f"{args.n:,} tasks in {elapsed:.1f} s; waiting {args.ttl} s for the results to expire")
        await asyncio.sleep(args.ttl + 1)
        await Watchdog(hive.broker, interval=1.0).sweep()
        rows.append(await sample("after TTL+sweep"))
        left = await left_over()
        log(f"left: {sum(left.values()) / 2**10:.1f} KiB in keys: "
            + ", ".join(f"{k} {v:,} B" for k, v in left.items()))
    finally:
        spores.stop()
        await hive.close()
    def own(row: dict[str, Any]) -> int:
        return int(row["used_memory"] - row["clients"] - row["lua_caches"] - row["tables"])

    base, idle = rows[0]["used_memory"], rows[1]["used_memory"]
    full, after = rows[-2]["used_memory"], rows[-1]["used_memory"]
    # finished tasks still kept at the end (a run longer than the TTL has let the first ones expire)
    kept = max(rows[-2]["records_kept"], 1)
    summary = {
        "broker": config.broker, "tasks": args.n, "ttl_s": args.ttl, "expire_effort": args.expire_effort or 1,
        "collect": args.collect, "rows": rows, "kept_at_end": kept,
        "bytes_per_finished_task": round((full - base) / kept, 1),
        # over every task record Redis holds, the expired ones its expiry cycle has not reclaimed yet included
        "bytes_per_record_held": round((full - base) / max(rows[-2]["keys"], 1), 1),
        # every task's cost over the idle hive, whatever it still keeps (--collect: its result was collected)
        "bytes_per_task_over_idle": round((full - idle) / args.n, 1),
        # what each task added from the first mark to the last, without the connections' buffers, the script
        # cache and the keyspace tables (costs that do not grow with the tasks run)
        "bytes_per_task_marginal": round((own(rows[-2]) - own(rows[2])) / max(args.n - args.n // 4, 1), 1),
        "after_ttl_vs_baseline_pct": round(100 * (after - base) / base, 1),
        "after_ttl_vs_idle_pct": round(100 * (after - idle) / idle, 1),
        "left_in_keys_bytes": left,
        # the hive's own keys (MEMORY USAGE summed) after the TTL against the idle hive's: whether the tasks left
        # anything behind, apart from the server's own allocations that no key holds
        "idle_keys_bytes": sum(idle_keys.values()),
        "after_ttl_keys_vs_idle_pct": round(100 * (sum(left.values()) - sum(idle_keys.values()))
                                            / max(sum(idle_keys.values()), 1), 1),
        # what the hive's data adds once the results expired: used_memory less the server's own growth
        "after_ttl_data_vs_baseline_pct": round(100 * (own(rows[-1]) - own(rows[0])) / base, 1),
        "after_ttl_data_vs_idle_pct": round(100 * (own(rows[-1]) - own(rows[1])) / idle, 1),
    }
    if args.collect:
        log(f"per task, its result collected and forgotten: {summary['bytes_per_task_marginal']} B from the first "
            f"mark to the last ({summary['bytes_per_task_over_idle']} B over the idle hive, fixed costs included; "
            f"{rows[-2]['records_kept']:,} records kept)")
    else:
        log(f"per finished task kept: {summary['bytes_per_finished_task']} B (per record held, expired ones not "
            f"yet reclaimed included: {summary['bytes_per_record_held']} B)")
    log(f"after the TTL: the hive's keys {sum(left.values()) / 2**10:.1f} KiB against the idle hive's "
        f"{summary['idle_keys_bytes'] / 2**10:.1f} KiB ({summary['after_ttl_keys_vs_idle_pct']:+.1f} %); "
        f"used_memory {summary['after_ttl_vs_idle_pct']:+.1f} % of the idle hive "
        f"({summary['after_ttl_data_vs_idle_pct']:+.1f} % without client buffers, the script cache and the "
        f"keyspace tables), {summary['after_ttl_vs_baseline_pct']:+.1f} % of the empty server")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--ttl", type=float, default=60.0, help="HIVE_RESULT_TTL for the run, seconds")
    parser.add_argument("--spores", type=int, default=2)
    parser.add_argument("--broker", choices=["streams", "arq"], default=None)
    parser.add_argument("--expire-effort", type=int, choices=range(1, 11), default=None, metavar="1-10",
                        help="the server's active-expire-effort (Redis's default: 1)")
    parser.add_argument("--collect", action="store_true",
                        help="collect each batch's results with forget=True (Hive.map), as a client that keeps none")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary = on_private_redis(lambda url, folder: measure(args, url, folder), "memory")
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
