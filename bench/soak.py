#!/usr/bin/env python3
"""A soak: steady traffic for many minutes, with spores killed and replaced, and whether Redis stays bounded.

    python bench/soak.py [--minutes 15] [--rate 300] [--ttl 60] [--spores 2] [--kill-every 120]
                         [--broker streams|arq] [--json]

On a private ``redis-server`` (no persistence), with a nexus process (its watchdog sweeps) and unnamed spores
(real processes): each second it submits ``--rate`` tasks, 2 % of them ``bench.fail`` without retries (dead
letters). Every ``--kill-every`` seconds one spore is killed with SIGKILL and an unnamed one started in its
place, so stopped consumers and node ids pile up unless something removes them. Every 30 s it prints Redis
``used_memory``, the key count, the dead letters, the finished-status indexes, the stream groups' consumers
and the registered nodes. Once ``HIVE_RESULT_TTL`` plus a lease has passed the hive holds a steady window of
finished tasks, so every figure should stay flat from then on: the summary compares the last third of the
run with the samples just after that warm-up. Nothing is asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.support import Namespace, log, on_private_redis, save_result, spore_env  # noqa: E402
from hive_framework import TaskSpec, TaskStatus  # noqa: E402
from hive_framework.broker.finished import finished_counts  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

SAMPLE_EVERY_S = 30.0
FAIL_SHARE = 0.02


class Fleet:
    """The nexus and the spores, each its own process group, stopped (or killed) by pid."""

    def __init__(self, env: dict[str, str], log_dir: Path, concurrency: int) -> None:
        self.env, self.log_dir, self.concurrency = env, log_dir, concurrency
        self.started = 0
        self.spores: list[subprocess.Popen[bytes]] = []
        self.nexus = self._start("nexus", ["nexus", "--no-monitor"])

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "hive_framework", *args]
        with open(self.log_dir / f"{name}.log", "ab") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def add_spore(self) -> None:
        self.started += 1
        self.spores.append(self._start(f"spore-{self.started}", [
            "spore", "--concurrency", str(self.concurrency), "--app", "bench.jobs"]))

    def kill_one(self) -> None:
        """SIGKILL the oldest spore (no goodbye: its consumer and node id stay behind) and start another."""
        victim = self.spores.pop(0)
        victim.kill()
        victim.wait()
        self.add_spore()

    def check_alive(self) -> None:
        for proc in [self.nexus, *self.spores]:
            if proc.poll() is not None:
                raise RuntimeError(f"pid {proc.pid} exited early (rc={proc.returncode}); logs in {self.log_dir}")

    def stop(self) -> None:
        for proc in [*self.spores, self.nexus]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.spores, self.nexus]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def consumers(redis: Any, prefix: str) -> int | None:
    """Consumers in the groups of every stream under ``prefix`` (``None`` on an engine without streams)."""
    streams = [key async for key in redis.scan_iter(match=f"{prefix}:*", _type="stream", count=1000)]
    if not streams:
        return None
    return sum([int(g["consumers"]) for s in streams for g in await redis.xinfo_groups(s)])


async def soak(args: argparse.Namespace, redis_url: str, log_dir: Path) -> dict[str, Any]:
    ns = Namespace(time.strftime("%Y%m%d%H%M%S"))
    config = ns.hive_config(redis_url, concurrency=50, broker=args.broker)
    config = config.evolve(result_ttl=float(args.ttl), watchdog_interval=5.0)
    hive = await Hive(Kernel(config, apps=["bench.jobs"])).open()
    redis, keys = hive.broker.redis, hive.broker.keys
    finals = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()

    async def sample() -> None:
        info = await redis.info("memory")
        row = {
            "t_s": round(time.monotonic() - started), "used_memory": int(info["used_memory"]),
            "keys": int(await redis.dbsize()), "dead_letters": int(await redis.zcard(keys.dead_letters)),
            # tasks finished within the result TTL (the records kept), from the bucketed counts (the key keeps the
            # name of the index these counts replaced, so older result files compare)
            "finished_index": sum(count for status, count in (await finished_counts(
                redis, keys, config.result_ttl)).items() if status in finals),
            "consumers": await consumers(redis, config.key_prefix),
            "nodes": int(await redis.scard(keys.nodes)),
            "ran": int(await redis.get(ns.counter) or 0),
        }
        rows.append(row)
        log(f"t={row['t_s']:>5}s used_memory {row['used_memory'] / 2**20:7.2f} MiB, keys {row['keys']:>7,}, "
            f"dead {row['dead_letters']:>5,}, finished in the TTL {row['finished_index']:>7,}, "
            f"consumers {row['consumers']}, nodes {row['nodes']}, ran {row['ran']:,}")

    fleet = Fleet(spore_env(config, ns.counter), log_dir, concurrency=50)
    for _ in range(args.spores):
        fleet.add_spore()
    submitted = kills = 0
    try:
        await sample()
        end = started + args.minutes * 60
        next_sample, next_kill = started + SAMPLE_EVERY_S, started + args.kill_every
        fails_owed = 0.0
        while (now := time.monotonic()) < end:
            fleet.check_alive()
            fails_owed += args.rate * FAIL_SHARE
            fails = int(fails_owed)
            fails_owed -= fails
            specs = [TaskSpec(task_type="bench.noop", payload={}) for _ in range(args.rate - fails)]
            specs += [TaskSpec(task_type="bench.fail", payload={}, max_retries=0) for _ in range(fails)]
            await hive.submit_many(specs)
            submitted += len(specs)
            if now >= next_kill:
                fleet.kill_one()
                kills += 1
                next_kill += args.kill_every
            if now >= next_sample:
                await sample()
                next_sample += SAMPLE_EVERY_S
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))  # one batch a second
        await sample()
    finally:
        fleet.stop()
        await hive.close()

    warm = args.ttl + config.lease_seconds + SAMPLE_EVERY_S
    settled = [r for r in rows if r["t_s"] >= warm]
    tail = settled[len(settled) * 2 // 3:]
    head = settled[: max(1, len(settled) // 3)]
    summary: dict[str, Any] = {
        "broker": config.broker, "minutes": args.minutes, "rate": args.rate, "ttl_s": args.ttl,
        "spores": args.spores, "kills": kills, "submitted": submitted, "rows": rows,
    }
    if head and tail:
        for field in ("used_memory", "keys", "dead_letters", "finished_index", "nodes"):
            summary[f"{field}_growth_pct"] = round(
                100 * (max(r[field] for r in tail) / max(1, max(r[field] for r in head)) - 1), 1)
        log(f"after the warm-up ({warm:.0f} s), last third vs first third (max): " + ", ".join(
            f"{f} {summary[f + '_growth_pct']:+.1f} %" for f in ("used_memory", "keys", "dead_letters",
                                                               "finished_index", "nodes")))
    log(f"{submitted:,} tasks submitted, {kills} spores killed with SIGKILL and replaced")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=300, help="tasks submitted per second")
    parser.add_argument("--ttl", type=float, default=60.0, help="HIVE_RESULT_TTL for the run, seconds")
    parser.add_argument("--spores", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between two spore kills")
    parser.add_argument("--broker", choices=["streams", "arq"], default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary = on_private_redis(lambda url, folder: soak(args, url, folder), "soak")
    save_result(f"soak-{summary['broker']}", summary)
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
