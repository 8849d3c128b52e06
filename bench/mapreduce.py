#!/usr/bin/env python3
"""Map-reduce fan-out: ``Hive.map`` of N items that each ``await asyncio.sleep(0.01)`` on P spore processes.

    python bench/mapreduce.py [--redis-url URL] [--items 1000] [--procs 2] [--concurrency 50] [--reps 5]

Figures, per repetition (the median is the headline; the first run is a warm-up, not counted):

* wall: ``Hive.map`` from the call to the last result in hand (enqueue + run + collect, results in order);
* ideal: N x 10 ms / (P x C) slots, the floor with zero overhead (0.1 s for 1,000 on 2 x 50);
* sequential: N x 10 ms, one item after another (10 s for 1,000);
* overhead per item: (wall - ideal) / N, the wall time each item adds beyond its sleep, amortised;
* slot overhead per item: (wall x slots - N x 10 ms) / N, how long each item held a slot beyond its
  sleep, at most (queueing, the spore's bookkeeping, Redis round trips);
* submit and first result: from one extra run through ``MapJob``, the machinery under ``Hive.map``;
* ``chunk_size=10`` rows: the same map with ten items per task (run one after another inside it), so a
  tenth of the tasks; the ideal is unchanged as long as tasks >= slots.

Each run is verified: the results are exactly ``0..N-1`` in order, and the jobs' counter rose by N.
Without ``--redis-url`` a private ``redis-server`` runs on a free port in a temp dir (no persistence)
and is stopped by its pid. With ``--redis-url`` every key lives under a unique ``bench:<stamp>:*``
namespace (plus ARQ's per-job keys of this run's tasks), deleted at the end; nothing is flushed.
Progress goes to stderr, the table to stdout; exit status 1 when a run could not be verified.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from bench import support  # noqa: E402
from bench.jobs import SLEEP_S  # noqa: E402
from bench.support import Namespace, Workers, log  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.jobs import MapJob  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

TASK_TYPE = "bench.sleepy"


async def wait_online(client: Hive, workers: Workers, names: set[str], timeout: float = 60.0) -> float:
    """Until every spore beats; returns the seconds it took (polled, with a deadline)."""
    t0 = time.perf_counter()
    while not names <= {n.node_name for n in await client.nodes()}:
        workers.check_alive()
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"spores {sorted(names)} not online after {timeout}s:\n{workers.tail()}")
        await asyncio.sleep(0.05)
    return time.perf_counter() - t0


async def one_map(client: Hive, admin: AsyncRedis, counter: str, n: int, timeout: float,
                  chunk_size: int = 1) -> dict[str, Any]:
    before = int(await admin.get(counter) or 0)
    t0 = time.perf_counter()
    results = await client.map(TASK_TYPE, [{"x": i} for i in range(n)], timeout=timeout, chunk_size=chunk_size)
    wall = time.perf_counter() - t0
    delta = int(await admin.get(counter) or 0) - before
    return {"wall_s": wall, "verified": results == list(range(n)) and delta == n, "counter_delta": delta}


async def one_breakdown(client: Hive, n: int, timeout: float) -> dict[str, Any]:
    """Where a map's time goes: submitting every task, the first outcome, the last one."""
    job = MapJob(client.broker, TASK_TYPE, [{"x": i} for i in range(n)])
    t0 = time.perf_counter()
    await job.submit()
    submitted = time.perf_counter() - t0
    first = None
    async for _ in job.stream(timeout):
        if first is None:
            first = time.perf_counter() - t0
    last = time.perf_counter() - t0
    ok = [o.result for o in job.ordered()] == list(range(n))
    return {"submit_s": submitted, "first_s": first, "last_s": last, "verified": ok}


def table(runs: list[dict[str, Any]], breakdown: dict[str, Any], chunked: dict[int, list[dict[str, Any]]],
          n: int, procs: int, conc: int) -> str:
    slots = procs * conc
    ideal = n * SLEEP_S / slots
    sequential = n * SLEEP_S
    walls = [r["wall_s"] for r in runs]
    rows = [(f"wall, median of {len(walls)}", statistics.median(walls)), ("wall, best", min(walls)),
            ("wall, worst", max(walls))]
    out = [
        f"| {n} items x {SLEEP_S * 1000:g} ms sleep, {procs} spores x {conc} slots | wall (s) | x ideal "
        f"({ideal:g} s) | speed-up vs sequential ({sequential:g} s) | overhead / item (ms) "
        f"| slot overhead / item (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows += [(f"wall, chunk_size={size}, median of {len(rs)}", statistics.median(r["wall_s"] for r in rs))
             for size, rs in chunked.items()]
    for label, wall in rows:
        per_item = (wall - ideal) / n * 1000
        per_slot = (wall * slots - n * SLEEP_S) / n * 1000
        out.append(f"| {label} | {wall:.3f} | {wall / ideal:.1f} | {sequential / wall:.1f}x | {per_item:.3f} "
                   f"| {per_slot:.2f} |")
    out.append("")
    out.append(f"MapJob breakdown (one run): submit {breakdown['submit_s']:.3f} s, first result "
               f"{breakdown['first_s']:.3f} s, last {breakdown['last_s']:.3f} s "
               f"({'verified' if breakdown['verified'] else 'NOT VERIFIED'})")
    out.append("runs (s): " + ", ".join(f"{w:.3f}" for w in walls)
               + f"; all verified: {all(r['verified'] for r in runs)}")
    for size, rs in chunked.items():
        out.append(f"chunk_size={size} runs (s): " + ", ".join(f"{r['wall_s']:.3f}" for r in rs)
                   + f"; {-(-n // size)} tasks per map; all verified: {all(r['verified'] for r in rs)}")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    private = None if args.redis_url else support.PrivateRedis()
    url = args.redis_url or private.url  # type: ignore[union-attr]
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-mr-logs-"))
    ns = Namespace(stamp)
    config = ns.hive_config(url, args.concurrency)
    admin = AsyncRedis.from_url(url)
    workers: Workers | None = None
    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1):
        log(f"warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs: other work will skew the figures")
    try:
        try:
            server = await admin.info("server")
        except Exception as exc:
            raise SystemExit(f"no Redis answers at {support.mask(url)}: {exc}") from None
        log(f"Redis {server.get('redis_version')} at {support.mask(url)}{' (private)' if private else ''}; "
            f"namespace {ns.root}; spore logs in {log_dir}")
        tag = ns.root.rsplit(":", 1)[-1]
        workers = Workers("spores", support.spore_argvs(args.procs, args.concurrency, tag),
                          support.spore_env(config, ns.counter), log_dir)
        async with Hive(Kernel(config, apps=["bench.jobs"])) as client:
            names = {f"bench-{tag}-{i + 1}" for i in range(args.procs)}
            log(f"{args.procs} spores online after {await wait_online(client, workers, names):.2f} s")
            log("warm-up run")
            warm = await one_map(client, admin, ns.counter, args.items, args.timeout)
            runs = []
            for rep in range(args.reps):
                runs.append(await one_map(client, admin, ns.counter, args.items, args.timeout))
                log(f"run {rep + 1}/{args.reps}: {runs[-1]['wall_s']:.3f} s, verified {runs[-1]['verified']}")
            breakdown = await one_breakdown(client, args.items, args.timeout)
            chunked: dict[int, list[dict[str, Any]]] = {}
            for size in args.chunk_sizes:
                chunked[size] = [await one_map(client, admin, ns.counter, args.items, args.timeout, size)
                                 for _ in range(args.reps)]
                log(f"chunk_size={size}: " + ", ".join(f"{r['wall_s']:.3f}" for r in chunked[size]))
    finally:
        if workers is not None:
            log(f"spores stopped: {workers.stop()}")
        deleted = await support.delete_run_keys(admin, ns, [])
        log(f"deleted {deleted} keys of this run")
        await admin.aclose()
        if private is not None:
            private.stop()
    print(f"## Hive.map fan-out — {stamp}, Redis {server.get('redis_version')}"
          f"{' (private)' if private else ''}, warm-up {warm['wall_s']:.3f} s\n")
    print(table(runs, breakdown, chunked, args.items, args.procs, args.concurrency))
    every = [warm, *runs, *(r for rs in chunked.values() for r in rs)]
    if all(r["verified"] for r in every) and breakdown["verified"]:
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"a run could not be verified; spore logs in {log_dir}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="use this Redis (keys namespaced and deleted after; never flushed) "
                        "instead of a private redis-server")
    parser.add_argument("--items", type=int, default=1000, help="items per map (default 1000)")
    parser.add_argument("--procs", type=int, default=2, help="spore processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=50, help="slots per spore (default 50)")
    parser.add_argument("--reps", type=int, default=5, help="measured runs after the warm-up (default 5)")
    parser.add_argument("--chunk-sizes", type=lambda text: [int(x) for x in text.split(",") if x], default=[10],
                        help="also time Hive.map with these chunk sizes, comma-separated (default 10; '' for none)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on a map after this many seconds")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
