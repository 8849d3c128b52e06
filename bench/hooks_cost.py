#!/usr/bin/env python3
"""What the life-cycle hooks cost per task: with no implementation, with the built-in ``counters`` plugin (the
default), and with one trivial one besides (issue 20).

    python bench/hooks_cost.py [--tasks 20000] [--reps 2] [--redis-url URL]

1. Dispatch, in-process: the spore's per-attempt hook calls (``before_task`` then ``after_task``, as
   ``AttemptRunner.run`` makes them, for a completed task) timed alone, in microseconds of CPU per task.
2. Drain: ``--tasks`` no-op tasks (``bench.noop``) queued, then drained by 2 spore processes of 50 slots,
   with ``counters`` disabled (no implementation), as by default, and with ``bench.hooks_trivial`` loaded
   too, in the order none, default, one, one, default, none... so that drift cancels; jobs/s from the first
   task seen to the last, and the spores' CPU per task.

Without ``--redis-url`` a private ``redis-server`` is started on a free port and stopped by its pid; with
one, every key lives under ``bench:<stamp>:*`` and is deleted at the end (nothing is flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from bench import hooks_trivial, support  # noqa: E402
from bench.support import Namespace, PrivateRedis, Workers, log  # noqa: E402
from hive_framework import HiveConfig, Kernel, TaskMessage, TaskSpec, TaskStatus  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402

PROCS = 2
COUNTERS = "counters"
LABELS = ("no implementation (HIVE_DISABLE_PLUGINS=counters)", "default: the counters plugin",
          "counters + one trivial implementation")
CONCURRENCY = 50
DISPATCH_TASKS = 200_000


async def dispatch_us(kernel: Kernel) -> float:
    """CPU microseconds per task of the two hook calls every successful attempt makes."""
    started = datetime.now(UTC)
    message = TaskMessage(task_id="0" * 32, task_type="bench.noop", status=TaskStatus.COMPLETED, attempt=1,
                          started_at=started, completed_at=started + timedelta(milliseconds=3))
    hooks = kernel.lifecycle
    started = time.process_time()
    for _ in range(DISPATCH_TASKS):
        if hooks["before_task"]:
            await kernel.run_lifecycle("before_task", task=message, node_id="bench")
        if hooks["after_task"]:
            await kernel.run_lifecycle("after_task", task=message, result=None, node_id="bench")
    return (time.process_time() - started) / DISPATCH_TASKS * 1e6


async def drain(url: str, ns: Namespace, config: HiveConfig, n: int, apps: list[str], log_dir: Path,
                tag: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Queue n no-ops (untimed), start the spores with ``apps`` besides ``bench.jobs``, and time the drain by
    polling the counter every 5 ms."""
    redis = AsyncRedis.from_url(url)
    try:
        await redis.delete(ns.counter)
        async with Hive(Kernel(config, apps=["bench.jobs"], load_entry_points=False)) as client:
            for lo in range(0, n, 1000):
                await client.submit_many([TaskSpec(task_type="bench.noop", payload={"i": i})
                                          for i in range(lo, min(n, lo + 1000))])
        options = [arg for app in ["bench.jobs", *apps] for arg in ("--app", app)]
        argvs = [[sys.executable, "-m", "hive_framework", "spore", "--name", f"bench-hooks-{tag}-{i}",
                  "--concurrency", str(CONCURRENCY), *options] for i in range(PROCS)]
        env = {**support.spore_env(config, ns.counter), **(extra_env or {})}
        workers = Workers(f"hooks-{tag}", argvs, env, log_dir)
        try:
            first: tuple[float, int, float] | None = None
            deadline = time.perf_counter() + 300
            while True:
                count = int(await redis.get(ns.counter) or 0)
                now = time.perf_counter()
                if count and first is None:
                    first = (now, count, workers.cpu_seconds())
                if count >= n:
                    break
                if now > deadline:
                    raise SystemExit(f"{tag}: drained only {count} of {n} in 300 s; see {workers.log_path}")
                workers.check_alive()
                await asyncio.sleep(0.005)
            assert first is not None
            ran = n - first[1]
            return {"jobs_per_s": ran / (now - first[0]),
                    "cpu_us_per_task": (workers.cpu_seconds() - first[2]) / ran * 1e6}
        finally:
            workers.stop()
    finally:
        await redis.aclose()


async def main_async(args: argparse.Namespace) -> None:
    quiet = HiveConfig.load(environ={}, env_file="/dev/null", toml_file=None)
    bare = quiet.evolve(disable_plugins=(COUNTERS,))
    none = await dispatch_us(Kernel(bare, load_entry_points=False))
    default = await dispatch_us(Kernel(quiet, load_entry_points=False))
    one = await dispatch_us(Kernel(quiet, plugins=[hooks_trivial], load_entry_points=False))
    print("| hook dispatch per task (before_task + after_task) | CPU µs |")
    print("|---|---|")
    for label, value in zip(LABELS, (none, default, one), strict=True):
        print(f"| {label} | {value:.3f} |")
    print()

    private = None if args.redis_url else PrivateRedis()
    url = args.redis_url or private.url  # type: ignore[union-attr]
    ns = Namespace(time.strftime("%Y%m%d-%H%M%S"))
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1: [], 2: []}
    try:
        with tempfile.TemporaryDirectory(prefix="hive-bench-hooks-") as tmp:
            order = [0, 1, 2, 2, 1, 0] * args.reps
            for index, arm in enumerate(order):
                config = ns.hive_config(url, CONCURRENCY).evolve(key_prefix=f"{ns.root}:r{index}",
                                                                  high_priority_queue=f"{ns.root}:r{index}:q:high",
                                                                  background_queue=f"{ns.root}:r{index}:q:bg",
                                                                  broadcast_channel=f"{ns.root}:r{index}:bc")
                log(f"drain {index + 1}/{len(order)}: {args.tasks} tasks, {LABELS[arm]}")
                apps = ["bench.hooks_trivial"] if arm == 2 else []
                env = {"HIVE_DISABLE_PLUGINS": COUNTERS} if arm == 0 else {}
                runs[arm].append(await drain(url, ns, config, args.tasks, apps, Path(tmp), f"r{index}", env))
    finally:
        if private is not None:
            private.stop()
        else:
            client = AsyncRedis.from_url(url)
            keys = [k async for k in client.scan_iter(match=f"{ns.root}:*", count=1000)]
            for lo in range(0, len(keys), 1000):
                await client.delete(*keys[lo : lo + 1000])
            await client.aclose()

    def mean(arm: int, key: str) -> float:
        return statistics.mean(r[key] for r in runs[arm])

    print(f"| drain of {args.tasks:,} no-ops, {PROCS} spores x {CONCURRENCY} | jobs/s (mean of {len(runs[0])}) "
          "| spore CPU µs / task |")
    print("|---|---|---|")
    for arm, label in enumerate(LABELS):
        print(f"| {label} | {mean(arm, 'jobs_per_s'):,.0f} | {mean(arm, 'cpu_us_per_task'):.0f} |")
    print()
    base = mean(0, "jobs_per_s")
    print(f"drain ratio counters/no implementation: {mean(1, 'jobs_per_s') / base:.3f}, one trivial more/no "
          f"implementation: {mean(2, 'jobs_per_s') / base:.3f}; dispatch with counters: {default:.3f} µs per task, "
          f"{default / mean(1, 'cpu_us_per_task') * 100:.2f} % of the spore CPU per task")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of the none, one, one, none order")
    parser.add_argument("--redis-url", default="")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
