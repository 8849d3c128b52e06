#!/usr/bin/env python3
"""Is hive's cost flat with depth? The same figures on an empty hive and on one holding a deep backlog.

    python bench/depth.py [--depth 1000000] [--settle 120] [--quick]

Issue 18: "with 1,000,000 tasks already queued (and 1,000,000 finished records kept), enqueue p50/p99, drain
rate and claim latency beside the same figures on an empty hive; goal: within 10 %".

Always on a private ``redis-server`` (free port, no persistence, stopped by its pid at the end): the run
FLUSHes it between phases and fills it with millions of keys, which a shared Redis must never see.
Streams broker (hive's default), spores ``python -m hive_framework spore --app bench.jobs --concurrency 50``.

Phases, in this order (the empty one is measured again at the end, so drift of a shared machine shows):

* ``empty``: the measurements below on a fresh server.
* fill: D finished records made by real runs (D ``bench.noop`` submitted in pipelined batches of 1,000 and
  run by 2 spores; each keeps its record for ``HIVE_RESULT_TTL``, 1 day by default), then D tasks queued of
  type ``bench.parked``: a type no measuring spore serves (as if its own fleet were down or far behind),
  same priority level (background) as the measured tasks. Not a lower priority of ``bench.noop``: the
  measuring spores would then run the backlog as soon as the measured work was done, so they would
  neither be idle for the claim latency nor leave the depth in place. The backlog shares every hive-wide
  structure with the measured tasks (the ``pending`` status index, the job-id -> entry hash, the task
  records' keyspace); its stream is its type's own, which is how hive queues by design.
* ``deep``: the same measurements with the backlog and the records in place, once the fill's own load has
  settled (``--settle``: up to 120 s for the 1-minute load average to drop below 1.5).
* ``empty again``: FLUSHDB, the same measurements.

Measurements of a phase:

A  enqueue: N single ``Hive.submit("bench.noop")`` calls from one client, no spore running, each timed
   (after 50 untimed ones): p50/p99.
B  drain, twice (B1 drains the A tasks topped up with ``submit_many`` to M, B2 M fresh ones): M queued
   ``bench.noop``, then 2 spore processes x 50 slots start: jobs/s from the first job counted to the last
   (counter polled every 5 ms), the spores' CPU per task over that span, Redis's CPU and expired keys.
C  claim latency and round trip, on the 2 idle spores: K sequential ``bench.clock`` tasks; claim latency =
   the wall clock when the task body started (read by the spore) minus the wall clock just before
   ``Hive.submit`` (client and spores share a host clock); round trip = submit + ``Hive.result``.

Goal: each latency's and the drain's cost (time per task) at depth within +10 % of the mean of the two empty
phases. For each part the server's ``INFO commandstats`` is reset before and read after, so each Redis command's
usec_per_call can be compared between the phases (commands run inside Lua scripts are counted too); the
run prints the commands whose per-call time grew. ``INFO memory`` and ``DBSIZE`` at depth are printed too.
Writes ``bench/results/depth-<stamp>-<commit>.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from bench import support  # noqa: E402
from bench.support import Namespace, PrivateRedis, Workers, log, pct, save_result, short_commit  # noqa: E402
from hive_framework import TaskSpec, TaskStatus  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

PROCS = 2
CONCURRENCY = 50
BATCH = 1000
#: the backlog's task type: no spore of this run serves it
PARKED = "bench.parked"
GOAL_RATIO = 1.10
#: a command's per-call time is reported as grown past this ratio (and this many µs per call)
GROWTH_RATIO = 1.25
GROWTH_MIN_US = 0.5


@dataclass(frozen=True)
class Sizes:
    n_enqueue: int  # A
    n_drain: int  # B (includes A's tasks)
    n_claim: int  # C
    depth: int  # queued backlog, and finished records, each
    budget_s: float  # B and the fill are abandoned past this


FULL = Sizes(n_enqueue=2_000, n_drain=10_000, n_claim=200, depth=1_000_000, budget_s=1800.0)
QUICK = Sizes(n_enqueue=300, n_drain=1_000, n_claim=30, depth=20_000, budget_s=300.0)


class DepthBench:
    """One private server, one namespace; each phase measures A, B and C the same way."""

    def __init__(self, url: str, sizes: Sizes, log_dir: Path) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.ns = Namespace(time.strftime("%Y%m%dT%H%M%S"))
        self.config = self.ns.hive_config(url, CONCURRENCY)
        self.admin = AsyncRedis.from_url(url)

    # --- server statistics -------------------------------------------------------------------------

    async def reset_stats(self) -> None:
        await self.admin.config_resetstat()

    async def redis_cpu(self) -> float:
        info = await self.admin.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def commandstats(self) -> dict[str, dict[str, float]]:
        """Per command since the last reset: calls, usec, usec_per_call (INFO/CONFIG/our counter reads left in)."""
        raw = await self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": int(v["usec"]),
                                             "usec_per_call": float(v["usec_per_call"])}
                for k, v in raw.items()}

    async def counter(self) -> int:
        return int(await self.admin.get(self.ns.counter) or 0)

    # --- spores ------------------------------------------------------------------------------------

    def start_spores(self, tag: str) -> Workers:
        argvs = support.spore_argvs(PROCS, CONCURRENCY, f"depth-{tag}")
        return Workers(f"spores-{tag}", argvs, support.spore_env(self.config, self.ns.counter), self.log_dir)

    async def wait_counter(self, workers: Workers, target: int, budget_s: float) -> tuple[float, float, int]:
        """Poll the counter every 5 ms until ``target``; returns (first seen, done, count at first seen)."""
        deadline = time.perf_counter() + budget_s
        t_first: float | None = None
        c_first = 0
        while True:
            count = await self.counter()
            now = time.perf_counter()
            if count and t_first is None:
                t_first, c_first = now, count
            if count >= target:
                assert t_first is not None
                return t_first, now, c_first
            if now > deadline:
                raise RuntimeError(f"{workers.label}: {count} of {target} done in {budget_s:g} s")
            workers.check_alive()
            await asyncio.sleep(0.005)

    # --- one phase ---------------------------------------------------------------------------------

    async def phase(self, name: str) -> dict[str, Any]:
        sizes = self.sizes
        out: dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
        await self.admin.delete(self.ns.counter)
        hive = await Hive(Kernel(self.config, apps=["bench.jobs"])).open()
        try:
            for i in range(50):  # warm-up: connections, scripts, the type view
                await hive.submit("bench.noop", {"i": -1 - i})
            log(f"{name} A: {sizes.n_enqueue} single submits")
            lat: list[float] = []
            await self.reset_stats()
            cpu0 = await self.redis_cpu()
            for i in range(sizes.n_enqueue):
                t0 = time.perf_counter()
                await hive.submit("bench.noop", {"i": i})
                lat.append(time.perf_counter() - t0)
            out["A"] = {"n": len(lat), "p50_ms": round(pct(lat, 50) * 1e3, 4), "p99_ms": round(pct(lat, 99) * 1e3, 4),
                        "mean_ms": round(sum(lat) / len(lat) * 1e3, 4),
                        "redis_cpu_ms_per_task": round((await self.redis_cpu() - cpu0) / len(lat) * 1e3, 4),
                        "commandstats": await self.commandstats()}

            queued = 50 + sizes.n_enqueue
            out["B"], workers = await self.drain(hive, name, 1, queued)
            out["B"]["spores_stop"] = workers.stop()
            out["B2"], workers = await self.drain(hive, name, 2, 0)
            out["B_mean"] = {"jobs_per_s": round((out["B"]["jobs_per_s"] + out["B2"]["jobs_per_s"]) / 2, 1)}
            try:
                log(f"{name} C: {sizes.n_claim} sequential bench.clock tasks")
                for _ in range(5):  # warm-up
                    await hive.run("bench.clock", {}, timeout=60)
                await asyncio.sleep(0.2)
                await self.reset_stats()
                cpu0 = await self.redis_cpu()
                claim: list[float] = []
                rtt: list[float] = []
                for _ in range(sizes.n_claim):
                    wall0, t0 = time.time(), time.perf_counter()
                    task_id = await hive.submit("bench.clock", {})
                    started = float(await hive.result(task_id, timeout=60))
                    rtt.append(time.perf_counter() - t0)
                    claim.append(started - wall0)
                await asyncio.sleep(0.1)
                out["C"] = {"n": len(claim),
                            "claim_p50_ms": round(pct(claim, 50) * 1e3, 3),
                            "claim_p99_ms": round(pct(claim, 99) * 1e3, 3),
                            "rt_p50_ms": round(pct(rtt, 50) * 1e3, 3), "rt_p99_ms": round(pct(rtt, 99) * 1e3, 3),
                            "redis_cpu_ms_per_task": round((await self.redis_cpu() - cpu0) / len(claim) * 1e3, 4),
                            "commandstats": await self.commandstats(),
                            "verified": await self.counter() == sizes.n_drain + 5 + sizes.n_claim}
            finally:
                out["spores_stop"] = workers.stop()
        finally:
            await hive.close()
        return out

    async def drain(self, hive: Hive, name: str, rep: int, queued: int) -> tuple[dict[str, Any], Workers]:
        """B: top the queue up to M ``bench.noop`` (``queued`` are there already), start 2 spores, time them from the
        first task counted to the last; returns the figures and the spores, still running."""
        sizes = self.sizes
        await self.admin.delete(self.ns.counter)
        for lo in range(queued, sizes.n_drain, BATCH):
            await hive.submit_many([TaskSpec(task_type="bench.noop", payload={"i": i})
                                    for i in range(lo, min(sizes.n_drain, lo + BATCH))])
        total = max(queued, sizes.n_drain)
        log(f"{name} B{rep}: {total} queued bench.noop, {PROCS} spores x {CONCURRENCY} slots")
        load = os.getloadavg()[0]
        await self.reset_stats()
        expired0 = int((await self.admin.info("stats"))["expired_keys"])
        redis0 = await self.redis_cpu()
        workers = self.start_spores(f"{name.replace(' ', '-')}-{rep}")
        try:
            # like wait_counter, with the spores' CPU read at the first task seen (their start-up excluded)
            deadline = time.perf_counter() + sizes.budget_s
            t_first: float | None = None
            c_first, cpu_first = 0, 0.0
            while (count := await self.counter()) < total:
                now = time.perf_counter()
                if count and t_first is None:
                    t_first, c_first, cpu_first = now, count, workers.cpu_seconds()
                if now > deadline:
                    raise RuntimeError(f"{name} B{rep}: {count} of {total} done in {sizes.budget_s:g} s")
                workers.check_alive()
                await asyncio.sleep(0.005)
            t_done = time.perf_counter()
            cpu_done = workers.cpu_seconds()
            if t_first is None:
                t_first, c_first, cpu_first = t_done, 0, cpu_done
            await asyncio.sleep(0.3)  # the last records and acknowledgements follow the counter's INCR
            redis_cpu = await self.redis_cpu() - redis0
            ran = total - c_first
            out = {"n": total, "jobs_per_s": round(ran / (t_done - t_first), 1) if t_done > t_first else None,
                   "first_to_last_s": round(t_done - t_first, 3),
                   "spawn_to_done_s": round(t_done - workers.t_spawn, 3),
                   "spore_cpu_ms_per_task": round((cpu_done - cpu_first) / ran * 1e3, 4) if ran else None,
                   "redis_cpu_ms_per_task": round(redis_cpu / total * 1e3, 4),
                   "expired_keys": int((await self.admin.info("stats"))["expired_keys"]) - expired0,
                   "loadavg_1m_at_start": round(load, 2),
                   "commandstats": await self.commandstats(),
                   "verified": await self.counter() == total}
        except BaseException:
            workers.stop()
            raise
        log(f"{name} B{rep}: {out['jobs_per_s']} jobs/s, spores {out['spore_cpu_ms_per_task']} ms CPU per task, "
            f"Redis {out['redis_cpu_ms_per_task']} ms, {out['expired_keys']} keys expired, load {load:.2f}")
        return out, workers

    # --- the deep state ----------------------------------------------------------------------------

    async def fill(self) -> dict[str, Any]:
        """D finished records by real runs, then D queued tasks of a type no spore serves."""
        depth = self.sizes.depth
        out: dict[str, Any] = {"depth": depth}
        await self.admin.delete(self.ns.counter)
        hive = await Hive(Kernel(self.config, apps=["bench.jobs"])).open()
        try:
            log(f"fill: {depth:,} bench.noop run to completion by {PROCS} spores (their records are kept)")
            workers = self.start_spores("fill")
            t0 = time.perf_counter()
            try:
                pushed = 0
                while pushed < depth:
                    # keep the queue under ~50,000 so the fill's own backlog stays small
                    while pushed - await self.counter() > 50_000:
                        workers.check_alive()
                        await asyncio.sleep(0.05)
                    n = min(BATCH, depth - pushed)
                    await hive.submit_many([TaskSpec(task_type="bench.noop", payload={}) for _ in range(n)])
                    pushed += n
                    if pushed % 100_000 == 0:
                        log(f"fill: {pushed:,} submitted, {await self.counter():,} finished")
                await self.wait_counter(workers, depth, self.sizes.budget_s)
            finally:
                workers.stop()
            out["finished_s"] = round(time.perf_counter() - t0, 1)
            log(f"fill: {depth:,} queued {PARKED} (no spore serves it), pipelined batches of {BATCH}")
            t0 = time.perf_counter()
            for lo in range(0, depth, BATCH):
                await hive.submit_many([TaskSpec(task_type=PARKED, payload={"i": i}, allow_unknown=True)
                                        for i in range(lo, min(depth, lo + BATCH))])
            out["queued_s"] = round(time.perf_counter() - t0, 1)
            keys = hive.broker.keys
            out["completed_index"] = (await hive.broker.get_queue_stats())["tasks_completed"]
            out["pending_index"] = int(await self.admin.zcard(keys.status_index(TaskStatus.PENDING)))
            out["verified"] = out["completed_index"] >= depth and out["pending_index"] == depth
        finally:
            await hive.close()
        info = await self.admin.info("memory")
        out["used_memory"] = int(info["used_memory"])
        out["used_memory_human"] = info["used_memory_human"]
        out["mem_fragmentation_ratio"] = info.get("mem_fragmentation_ratio")
        out["dbsize"] = int(await self.admin.dbsize())
        log(f"fill: done in {out['finished_s'] + out['queued_s']:.0f} s; used_memory {out['used_memory_human']}, "
            f"{out['dbsize']:,} keys; completed index {out['completed_index']:,}, pending {out['pending_index']:,}")
        return out


# --- report ------------------------------------------------------------------------------------------

#: (label, part, key, higher is better)
FIGURES = [
    ("enqueue p50 ms", "A", "p50_ms", False),
    ("enqueue p99 ms", "A", "p99_ms", False),
    ("drain jobs/s (mean of 2 drains)", "B_mean", "jobs_per_s", True),
    ("claim latency p50 ms", "C", "claim_p50_ms", False),
    ("claim latency p99 ms", "C", "claim_p99_ms", False),
    ("round trip p50 ms", "C", "rt_p50_ms", False),
    ("round trip p99 ms", "C", "rt_p99_ms", False),
    ("Redis CPU ms per enqueue", "A", "redis_cpu_ms_per_task", False),
    ("spore CPU ms per drained task (B1)", "B", "spore_cpu_ms_per_task", False),
    ("spore CPU ms per drained task (B2)", "B2", "spore_cpu_ms_per_task", False),
    ("Redis CPU ms per drained task (B1)", "B", "redis_cpu_ms_per_task", False),
    ("Redis CPU ms per drained task (B2)", "B2", "redis_cpu_ms_per_task", False),
]


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def cost_ratio(deep: float, base: float, higher_better: bool) -> float:
    """Deep's cost over the base's: > 1 is worse at depth (a rate's cost is its inverse)."""
    return base / deep if higher_better else deep / base


def table(res: dict[str, Any]) -> str:
    phases = res["phases"]
    empty, deep, again = phases["empty"], phases["deep"], phases.get("empty again")
    lines = [
        f"| figure | empty | deep ({res['sizes']['depth']:,} queued + {res['sizes']['depth']:,} finished) "
        "| empty again | deep / mean(empty) | cost ratio | goal (cost within +10 %) |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, part, key, higher in FIGURES:
        e, d = empty[part][key], deep[part][key]
        a = again[part][key] if again else None
        base = (e + a) / 2 if a is not None else e
        ratio = d / base if base else None
        cost = cost_ratio(d, base, higher) if d and base else None
        judged = "CPU" not in name
        verdict = "—" if not judged or cost is None else ("met" if cost <= GOAL_RATIO else "NOT met")
        if judged:
            verdicts.append(verdict)
        lines.append(f"| {name} | {fmt(e)} | {fmt(d)} | {fmt(a)} | {fmt(ratio)} | {fmt(cost)} | {verdict} |")
    res["verdict"] = "met" if all(v == "met" for v in verdicts) else "not met"
    return "\n".join(lines)


def growth(res: dict[str, Any]) -> str:
    """Commands whose usec_per_call grew from empty to deep, per part, largest added time first."""
    lines = ["| part | command | calls empty / deep | µs per call empty → deep | ratio | added µs per task |",
             "|---|---|---|---|---|---|"]
    phases = res["phases"]
    found = False
    for part, per in (("A", res["sizes"]["n_enqueue"]), ("B", None), ("C", res["sizes"]["n_claim"])):
        e, d = phases["empty"][part]["commandstats"], phases["deep"][part]["commandstats"]
        n_tasks = per or phases["deep"]["B"]["n"]
        rows = []
        for cmd, dv in d.items():
            ev = e.get(cmd)
            if ev is None or not ev["usec_per_call"] or cmd in ("info", "config|resetstat", "config", "get"):
                continue
            grew = dv["usec_per_call"] - ev["usec_per_call"]
            if dv["usec_per_call"] > ev["usec_per_call"] * GROWTH_RATIO and grew > GROWTH_MIN_US:
                rows.append((grew * dv["calls"] / n_tasks, cmd, ev, dv))
        for added, cmd, ev, dv in sorted(rows, reverse=True)[:8]:
            found = True
            lines.append(f"| {part} | {cmd} | {ev['calls']:,} / {dv['calls']:,} | {ev['usec_per_call']:.2f} → "
                         f"{dv['usec_per_call']:.2f} | {dv['usec_per_call'] / ev['usec_per_call']:.2f}x "
                         f"| {added:.2f} |")
    if not found:
        lines.append(f"| — | no command's per-call time grew over {GROWTH_RATIO}x and {GROWTH_MIN_US} µs | | | | |")
    return "\n".join(lines)


async def settle(max_s: float, load: float = 1.5) -> float:
    """After the fill (2 spores and a client flat out), wait until the 1-minute load average is below ``load``
    or ``max_s`` passed, so the deep phase does not start on the fill's own load; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        if os.getloadavg()[0] < load:
            break
        await asyncio.sleep(5)
    waited = time.perf_counter() - t0
    log(f"settled {waited:.0f} s after the fill; load {os.getloadavg()[0]:.2f}")
    return round(waited, 1)


async def main_async(args: argparse.Namespace) -> int:
    base = QUICK if args.quick else FULL
    sizes = Sizes(**{**asdict(base), "depth": args.depth if args.depth is not None else base.depth})
    stamp = time.strftime("%Y%m%dT%H%M%S")
    server = PrivateRedis()
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-depth-logs-"))
    bench = DepthBench(server.url, sizes, log_dir)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"stamp": stamp, "quick": args.quick, "sizes": asdict(sizes), "phases": {}}
    try:
        log(f"private Redis on port {server.port}; sizes {asdict(sizes)}; worker logs in {log_dir}; "
            f"load {load0[0]:.2f}")
        res["redis_server"] = (await bench.admin.info("server"))["redis_version"]
        res["phases"]["empty"] = await bench.phase("empty")
        await bench.admin.flushdb()
        res["fill"] = await bench.fill()
        res["fill"]["settle_s"] = await settle(args.settle)
        res["phases"]["deep"] = await bench.phase("deep")
        res["at_depth_after"] = {"dbsize": int(await bench.admin.dbsize()),
                                 "used_memory_human": (await bench.admin.info("memory"))["used_memory_human"]}
        await bench.admin.flushdb()
        res["phases"]["empty again"] = await bench.phase("empty again")
    finally:
        await bench.admin.aclose()
        server.stop()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["env"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "git": short_commit(),
                  "loadavg_at_start": [round(x, 2) for x in load0],
                  "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                  "worker_shape": f"{PROCS} spore processes x {CONCURRENCY} slots, streams broker"}
    md = table(res)
    grown = growth(res)
    res["table_md"] = md
    res["growth_md"] = grown
    out_path = save_result(f"depth-{stamp}{'-quick' if args.quick else ''}", res)
    fill = res["fill"]
    print(f"## depth: empty vs {sizes.depth:,} queued + {sizes.depth:,} finished — {stamp}, "
          f"{res['env']['worker_shape']}, Redis {res['redis_server']}, {os.cpu_count()} CPUs"
          f"{' (quick)' if args.quick else ''}\n")
    print(md)
    print(f"\nGoal (every latency/rate figure's cost within +10 % at depth): {res['verdict']}.")
    print(f"\nAt depth: used_memory {fill['used_memory_human']}, DBSIZE {fill['dbsize']:,}, fragmentation "
          f"{fill['mem_fragmentation_ratio']}; completed index {fill['completed_index']:,}, pending index "
          f"{fill['pending_index']:,}; filled in {fill['finished_s']} s (finished) + {fill['queued_s']} s (queued).")
    print("\nRedis commands whose time per call grew, empty → deep (INFO commandstats, per part):\n")
    print(grown)
    loads = ", ".join(f"{k} {v['loadavg_at_start'][0]:.2f}" for k, v in res["phases"].items())
    print(f"\nload average (1 min) at the start of each phase: {loads}; at end {res['env']['loadavg_at_end'][0]:.2f}"
          f"\nrun took {res['wall_s']} s; JSON: {out_path.relative_to(ROOT)}")
    checks = [p.get("verified", True) for ph in res["phases"].values() for p in (ph["B"], ph["B2"], ph["C"])]
    if all(checks) and fill["verified"]:
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"some figures could not be verified; spore logs kept in {log_dir}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=None,
                        help=f"queued tasks and finished records at depth, each (default {FULL.depth:,}; "
                             f"{QUICK.depth:,} with --quick)")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="after the fill, wait up to this many seconds for the 1-minute load to drop below 1.5")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
