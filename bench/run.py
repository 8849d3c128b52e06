#!/usr/bin/env python3
"""hive (each broker) vs raw ARQ, same Redis, one run: prints Markdown tables, writes JSON to bench/results/.

    python bench/run.py [--brokers streams,arq] [--redis-url URL] [--quick]

Rows: ``hive-streams`` and ``hive-arq`` (hive with each broker of ``--brokers``; both by default),
``arq default`` (raw ARQ 0.28 with its defaults) and ``arq poll 0.01`` (raw ARQ, worker and
``job.result`` polling every 10 ms). Every figure is printed with its ratio to ``arq default`` in the
same run; the hive rows are also compared with ``arq poll 0.01``. A full run takes about 2 minutes on
2 cores; ``--quick`` a few seconds.

Workloads (jobs are in bench/jobs.py; every job INCRs a counter so each run is verified):

A  one client enqueues N no-op jobs one call at a time, no worker running: per-call p50/p99, jobs/s.
   The systems take turns in 4 blocks of N/4 so that drift on a busy machine hits them alike.
B  2 worker processes (hive: ``python -m hive_framework spore``; ARQ: ``python -m arq``), 50 slots
   each, drain N queued jobs: jobs/s from the first job seen to the last (counter polled every 5 ms),
   and, on the private server, Redis commands and worker/Redis CPU per job over that span. hive and
   ARQ default drain twice, in the order hive-streams, hive-arq, arq, arq poll 0.01, arq, hive-arq,
   hive-streams, so that drift cancels out of the mean; ARQ poll 0.01 drains once.
C  one job at a time, enqueue + wait for its result: round trip p50/p99. hive: ``Hive.run``
   (BLPOP on the task's done list); ARQ: ``job.result()`` with its default 0.5 s poll (stopped at a
   time budget), and with workers and ``job.result`` polling every 0.01 s.
D  1,000 jobs that each ``await asyncio.sleep(0.01)``, enqueued at once (hive: ``Hive.submit_many``
   then ``gather`` of ``Hive.result``, and again through ``Hive.map``; ARQ: ``enqueue_job`` each, then
   ``gather`` of ``job.result``), wall time vs ideal = 1000 * 0.01 / 100 slots.

Without ``--redis-url`` a private ``redis-server`` is started on a free port (no persistence) and
stopped by its pid at the end. With ``--redis-url`` every key lives under a unique ``bench:<stamp>:*``
namespace (plus ARQ's per-job keys of this run's jobs), all deleted at the end; nothing is flushed.
Progress goes to stderr, the tables to stdout. Exit status 1 when a figure could not be verified.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import arq  # noqa: E402
from arq.connections import ArqRedis, RedisSettings, create_pool  # noqa: E402
from redis.asyncio import Redis as AsyncRedis  # noqa: E402

import hive_framework  # noqa: E402
from bench import support  # noqa: E402
from bench.jobs import SLEEP_S  # noqa: E402
from bench.support import Namespace, Workers, log, pct, save_result  # noqa: E402
from hive_framework import TaskSpec  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

PROCS = 2
CONCURRENCY = 50
ARQ_DEFAULT_POLL_S = 0.5
ARQ_FAST_POLL_S = 0.01
BROKERS = ("streams", "arq")
#: result keys of the raw ARQ rows, and their labels
ARQ = "arq"
ARQ_FAST = "arq_fast"
LABELS = {ARQ: "arq default", ARQ_FAST: "arq poll 0.01"}
#: the issue's goals (issue 9), checked for every hive row; drain vs Dramatiq needs the peers harness
GOAL_ENQUEUE_P50_MS = 0.2
GOAL_ENQUEUE_P99_MS = 1.0
GOAL_ROUNDTRIP_P50_MS = 2.0
GOAL_FANOUT_S = 0.3


def hive_key(broker: str) -> str:
    return f"hive-{broker}"


def label(key: str) -> str:
    return LABELS.get(key, key)


@dataclass(frozen=True)
class Sizes:
    n_jobs: int  # A and B
    n_rt: int  # C
    c_budget_s: float  # C stops early past this (ARQ's default 0.5 s poll makes each round trip ~0.5 s)
    n_fan: int  # D
    b_budget_s: float  # B is DNF past this


FULL = Sizes(n_jobs=10_000, n_rt=200, c_budget_s=20.0, n_fan=1_000, b_budget_s=60.0)
QUICK = Sizes(n_jobs=500, n_rt=20, c_budget_s=4.0, n_fan=100, b_budget_s=30.0)


class Bench:
    def __init__(self, url: str, ns: Namespace, sizes: Sizes, log_dir: Path, private: bool,
                 brokers: Sequence[str] = BROKERS) -> None:
        self.url = url
        self.brokers = list(brokers)
        self.ns = ns
        self.sizes = sizes
        self.log_dir = log_dir
        self.private = private
        self.admin = AsyncRedis.from_url(url)
        self.arq_job_ids: list[str] = []
        self.counter_reads = 0

    # --- counter and Redis bookkeeping -------------------------------------------------------------

    async def counter(self) -> int:
        self.counter_reads += 1
        return int(await self.admin.get(self.ns.counter) or 0)

    async def reset_counter(self) -> None:
        await self.admin.delete(self.ns.counter)

    async def redis_cpu(self) -> float | None:
        """CPU seconds the Redis server has used (private server only: a shared one serves others too)."""
        if not self.private:
            return None
        info = await self.admin.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def commands(self) -> int | None:
        """Commands the server has run so far (private server only; excludes INFO and our counter reads)."""
        if not self.private:
            return None
        stats = await self.admin.info("commandstats")
        total = int(sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info"))
        return total - self.counter_reads

    # --- the four workloads ------------------------------------------------------------------------

    async def enqueue(self, systems: dict[str, Callable[[int], Awaitable[None]]], n: int,
                      blocks: int = 4) -> dict[str, dict[str, Any]]:
        """A: n sequential enqueue calls per system, each timed; the systems take turns in ``blocks``
        blocks (hive-streams, hive-arq, arq, hive-streams...) so that drift on a shared machine hits all alike."""
        lat: dict[str, list[float]] = {name: [] for name in systems}
        wall = dict.fromkeys(systems, 0.0)
        cmds: dict[str, int | None] = dict.fromkeys(systems, 0)
        edges = [n * b // blocks for b in range(blocks + 1)]
        for lo, hi in itertools.pairwise(edges):
            for name, one in systems.items():
                cmd0 = await self.commands()
                t0 = time.perf_counter()
                for i in range(lo, hi):
                    a = time.perf_counter()
                    await one(i)
                    lat[name].append(time.perf_counter() - a)
                wall[name] += time.perf_counter() - t0
                cmd1 = await self.commands()
                used = cmds[name]
                cmds[name] = None if used is None or cmd0 is None or cmd1 is None else used + cmd1 - cmd0
        ran = await self.counter()
        out = {}
        for name in systems:
            used = cmds[name]
            out[name] = {
                "n": n, "blocks": blocks, "wall_s": round(wall[name], 3), "jobs_per_s": round(n / wall[name], 1),
                "p50_ms": round(pct(lat[name], 50) * 1e3, 4), "p99_ms": round(pct(lat[name], 99) * 1e3, 4),
                "mean_ms": round(wall[name] / n * 1e3, 4), "max_ms": round(max(lat[name]) * 1e3, 3),
                "redis_commands_per_job": None if used is None else round(used / n, 2),
                "ran_before_workers": ran, "verified": ran == 0,
            }
        return out

    async def drain(self, workers: Workers, n: int) -> dict[str, Any]:
        """B: poll the counter every 5 ms from worker spawn until it reaches n."""
        cmd0 = await self.commands()
        deadline = workers.t_spawn + self.sizes.b_budget_s
        t_first, c_first = None, 0
        cpu0: tuple[float, float | None] = (0.0, None)
        while True:
            count = await self.counter()
            now = time.perf_counter()
            if count and t_first is None:
                t_first, c_first = now, count
                cpu0 = (workers.cpu_seconds(), await self.redis_cpu())
            if count >= n:
                break
            if now > deadline:
                rate = None
                if t_first is not None and now > t_first:
                    rate = round((count - c_first) / (now - t_first), 1)
                return {"n": n, "dnf": True, "completed": count, "observed_jobs_per_s": rate,
                        "verified": False}
            workers.check_alive()
            await asyncio.sleep(0.005)
        t_done = now
        cpu1 = (workers.cpu_seconds(), await self.redis_cpu())
        cmd1 = await self.commands()
        await asyncio.sleep(0.5)
        final = await self.counter()
        assert t_first is not None
        span = t_done - t_first
        ran = n - c_first
        redis_cpu = None if cpu0[1] is None or cpu1[1] is None else cpu1[1] - cpu0[1]
        return {
            "n": n, "jobs_per_s": round(ran / span, 1) if span > 0 else None,
            "first_to_last_s": round(span, 3), "spawn_to_first_s": round(t_first - workers.t_spawn, 3),
            "spawn_to_done_s": round(t_done - workers.t_spawn, 3),
            "redis_commands_per_job": None if cmd0 is None or cmd1 is None else round((cmd1 - cmd0) / n, 2),
            # CPU from the first job seen to the last, per job run in that span (start-up excluded)
            "worker_cpu_ms_per_job": round((cpu1[0] - cpu0[0]) / ran * 1e3, 3) if ran else None,
            "redis_cpu_ms_per_job": None if redis_cpu is None or not ran else round(redis_cpu / ran * 1e3, 3),
            "counter_final": final, "verified": final == n,
        }

    async def roundtrips(self, rt: Callable[[int], Awaitable[Any]], n: int) -> dict[str, Any]:
        """C: 3 untimed warm-up round trips, then up to n timed ones (fewer if the time budget runs out)."""
        for i in range(3):
            got = await rt(-1 - i)
            if got != -1 - i:
                raise RuntimeError(f"warm-up round trip returned {got!r}, expected {-1 - i}")
        base = await self.counter()
        lat, wrong = [], 0
        stop_at = time.perf_counter() + self.sizes.c_budget_s
        for i in range(n):
            if time.perf_counter() > stop_at:
                break
            a = time.perf_counter()
            got = await rt(i)
            lat.append(time.perf_counter() - a)
            wrong += got != i
        await asyncio.sleep(0.2)
        delta = await self.counter() - base
        return {
            "n": len(lat), "n_planned": n, "complete": len(lat) == n,
            "p50_ms": round(pct(lat, 50) * 1e3, 3), "p99_ms": round(pct(lat, 99) * 1e3, 3),
            "mean_ms": round(sum(lat) / len(lat) * 1e3, 3), "max_ms": round(max(lat) * 1e3, 3),
            "wrong_results": wrong, "counter_delta": delta, "verified": wrong == 0 and delta == len(lat),
        }

    async def fanout(self, fan: Callable[[list[int]], Awaitable[tuple[list[Any], float]]],
                     n: int) -> dict[str, Any]:
        """D: n sleepy jobs at once, wait for all, check the sum and the counter."""
        xs = list(range(n))
        base = await self.counter()
        t0 = time.perf_counter()
        values, enqueue_s = await fan(xs)
        wall = time.perf_counter() - t0
        await asyncio.sleep(0.3)
        delta = await self.counter() - base
        total = sum(values)
        ideal = n * SLEEP_S / (PROCS * CONCURRENCY)
        return {
            "n": n, "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
            "wall_over_ideal": round(wall / ideal, 1),
            "enqueue_s": round(enqueue_s, 3), "sum": total, "counter_delta": delta,
            "verified": total == sum(xs) and len(values) == n and delta == n,
        }

    # --- systems -----------------------------------------------------------------------------------

    async def hive_client(self, broker: str) -> Hive:
        config = self.ns.hive_config(self.url, CONCURRENCY, broker)
        return await Hive(Kernel(config, apps=["bench.jobs"])).open()

    async def arq_pool(self, queue: str) -> ArqRedis:
        return await create_pool(RedisSettings.from_dsn(self.url), default_queue_name=queue)

    async def all_a(self, clients: dict[str, Hive], pool: ArqRedis) -> dict[str, dict[str, Any]]:
        systems: dict[str, Callable[[int], Awaitable[None]]] = {}
        for broker, client in clients.items():
            async def hive_one(i: int, client: Hive = client) -> None:
                await client.submit("bench.noop", {"i": i})

            systems[hive_key(broker)] = hive_one

        async def arq_one(i: int) -> None:
            job = await pool.enqueue_job("noop", i)
            assert job is not None
            self.arq_job_ids.append(job.job_id)

        systems[ARQ] = arq_one
        return await self.enqueue(systems, self.sizes.n_jobs)

    def start_spores(self, broker: str) -> Workers:
        config = self.ns.hive_config(self.url, CONCURRENCY, broker)
        argvs = support.spore_argvs(PROCS, CONCURRENCY, f"{broker}-{self.ns.root.rsplit(':', 1)[-1]}")
        return Workers(f"hive-{broker}-spores", argvs, support.spore_env(config, self.ns.counter), self.log_dir)

    def start_arq(self, variant: str, poll_delay: float | None) -> Workers:
        env = support.arq_env(self.url, self.ns.arq_queue(variant), CONCURRENCY, poll_delay, self.ns.counter)
        return Workers(f"arq-{variant}", support.arq_argvs(PROCS), env, self.log_dir)

    async def queue_noops_hive(self, client: Hive) -> None:
        """B's jobs for a repetition after the first (untimed): n no-op tasks in batches of 1,000."""
        n = self.sizes.n_jobs
        for lo in range(0, n, 1000):
            await client.submit_many([TaskSpec(task_type="bench.noop", payload={"i": i})
                                      for i in range(lo, min(n, lo + 1000))])

    async def queue_noops_arq(self, pool: ArqRedis) -> None:
        for i in range(self.sizes.n_jobs):
            job = await pool.enqueue_job("noop", i)
            assert job is not None
            self.arq_job_ids.append(job.job_id)

    async def hive_bcd(self, broker: str, client: Hive) -> dict[str, Any]:
        out: dict[str, Any] = {}
        name = hive_key(broker)
        await self.reset_counter()
        workers = self.start_spores(broker)
        try:
            log(f"{name} B: draining {self.sizes.n_jobs} jobs with {PROCS} spores")
            out["B"] = await self.drain(workers, self.sizes.n_jobs)

            async def rt(x: int) -> Any:
                return await client.run("bench.echo", {"x": x}, timeout=60)

            log(f"{name} C: {self.sizes.n_rt} round trips")
            out["C"] = await self.roundtrips(rt, self.sizes.n_rt)

            async def fan(xs: list[int]) -> tuple[list[Any], float]:
                t0 = time.perf_counter()
                specs = [TaskSpec(task_type="bench.sleepy", payload={"x": x}) for x in xs]
                ids = await client.submit_many(specs)
                enqueue_s = time.perf_counter() - t0
                return list(await asyncio.gather(*(client.result(t, timeout=90) for t in ids))), enqueue_s

            log(f"{name} D: fan-out of {self.sizes.n_fan} (submit_many, then gather Hive.result)")
            out["D"] = await self.fanout(fan, self.sizes.n_fan)

            async def fan_map(xs: list[int]) -> tuple[list[Any], float]:
                return await client.map("bench.sleepy", [{"x": x} for x in xs], timeout=90), 0.0

            log(f"{name} D: fan-out of {self.sizes.n_fan} (Hive.map)")
            out["D_map"] = await self.fanout(fan_map, self.sizes.n_fan)
        finally:
            out["workers_stop"] = workers.stop()
        return out

    async def arq_bcd(self, pool: ArqRedis, variant: str, poll_delay: float, prefill: bool) -> dict[str, Any]:
        """B (on the jobs already queued, or on ``n`` queued now if ``prefill``), C and D on raw ARQ."""
        out: dict[str, Any] = {}
        name = f"arq-{variant}"
        await self.reset_counter()
        if prefill:
            log(f"{name}: queueing {self.sizes.n_jobs} jobs for B (untimed)")
            await self.queue_noops_arq(pool)
        workers = self.start_arq(variant, None if poll_delay == ARQ_DEFAULT_POLL_S else poll_delay)
        try:
            log(f"{name} B: draining {self.sizes.n_jobs} jobs with {PROCS} arq workers")
            out["B"] = await self.drain(workers, self.sizes.n_jobs)

            async def rt(x: int) -> Any:
                job = await pool.enqueue_job("echo", x)
                assert job is not None
                self.arq_job_ids.append(job.job_id)
                return await job.result(timeout=60, poll_delay=poll_delay)

            log(f"{name} C: up to {self.sizes.n_rt} round trips (budget {self.sizes.c_budget_s:g} s)")
            out["C"] = await self.roundtrips(rt, self.sizes.n_rt)

            async def fan(xs: list[int]) -> tuple[list[Any], float]:
                t0 = time.perf_counter()
                jobs = []
                for x in xs:
                    job = await pool.enqueue_job("sleepy", x)
                    assert job is not None
                    jobs.append(job)
                self.arq_job_ids.extend(j.job_id for j in jobs)
                enqueue_s = time.perf_counter() - t0
                waits = (j.result(timeout=90, poll_delay=poll_delay) for j in jobs)
                return list(await asyncio.gather(*waits)), enqueue_s

            log(f"{name} D: fan-out of {self.sizes.n_fan}")
            out["D"] = await self.fanout(fan, self.sizes.n_fan)
        finally:
            out["workers_stop"] = workers.stop()
        return out

    async def hive_b_again(self, broker: str, client: Hive) -> dict[str, Any]:
        """B's second repetition: queue n no-op tasks again (untimed), start fresh spores, drain."""
        await self.reset_counter()
        log(f"{hive_key(broker)} B again: queueing {self.sizes.n_jobs} jobs, then draining them with fresh spores")
        await self.queue_noops_hive(client)
        workers = self.start_spores(broker)
        try:
            return {"B2": await self.drain(workers, self.sizes.n_jobs)}
        finally:
            workers.stop()

    async def arq_b_again(self, pool: ArqRedis) -> dict[str, Any]:
        await self.reset_counter()
        log(f"arq-default B again: queueing {self.sizes.n_jobs} jobs, then draining them with fresh workers")
        await self.queue_noops_arq(pool)
        workers = self.start_arq("default", None)
        try:
            return {"B2": await self.drain(workers, self.sizes.n_jobs)}
        finally:
            workers.stop()

    async def run(self) -> dict[str, Any]:
        res: dict[str, Any] = {hive_key(b): {} for b in self.brokers}
        res.update({ARQ: {}, ARQ_FAST: {}, "errors": []})
        clients: dict[str, Hive] = {}
        pool = await self.arq_pool(self.ns.arq_queue("default"))
        fast_pool = await self.arq_pool(self.ns.arq_queue("fast"))
        try:
            for broker in self.brokers:
                clients[broker] = await self.hive_client(broker)
            await self.reset_counter()
            # A for every system, taking turns, with no worker running anywhere
            names = [*(hive_key(b) for b in self.brokers), ARQ]
            log(f"A: enqueueing {self.sizes.n_jobs} jobs per system ({', '.join(names)} take turns)")
            for key, figures in (await self.all_a(clients, pool)).items():
                res[key]["A"] = figures
            # B runs twice for hive and ARQ default, in mirrored order: drift cancels out of the mean
            blocks: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = []
            for broker in self.brokers:
                blocks.append((hive_key(broker), functools.partial(self.hive_bcd, broker, clients[broker])))
            blocks.append((ARQ, lambda: self.arq_bcd(pool, "default", ARQ_DEFAULT_POLL_S, prefill=False)))
            blocks.append((ARQ_FAST, lambda: self.arq_bcd(fast_pool, "fast", ARQ_FAST_POLL_S, prefill=True)))
            blocks.append((ARQ, lambda: self.arq_b_again(pool)))
            for broker in reversed(self.brokers):
                blocks.append((hive_key(broker), functools.partial(self.hive_b_again, broker, clients[broker])))
            for key, block in blocks:
                try:
                    res[key].update(await block())
                except Exception as exc:  # keep the other systems' figures
                    log(f"{key} failed: {type(exc).__name__}: {exc}")
                    res["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
            for key in systems(res):
                reps = [res[key][b] for b in ("B", "B2") if b in res[key]]
                if reps:
                    res[key]["B_mean"] = mean_of(reps)
        finally:
            for client in clients.values():
                await client.close()
            await pool.aclose()
            await fast_pool.aclose()
        return res

    async def cleanup(self) -> int:
        try:
            return await support.delete_run_keys(self.admin, self.ns, self.arq_job_ids)
        finally:
            await self.admin.aclose()


# --- report ------------------------------------------------------------------------------------------


def systems(res: dict[str, Any]) -> list[str]:
    """Result keys of the systems measured, in table order: hive rows first, then raw ARQ."""
    hive = [k for k in res if k.startswith("hive-")]
    return [*hive, ARQ, ARQ_FAST]


def mean_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric figure over B's repetitions; verified only when every repetition was."""
    out: dict[str, Any] = {"reps": len(reps), "verified": all(r.get("verified") for r in reps)}
    for key in ("jobs_per_s", "spawn_to_done_s", "redis_commands_per_job", "worker_cpu_ms_per_job",
                "redis_cpu_ms_per_job"):
        values: list[Any] = [r.get(key) for r in reps]
        if all(isinstance(v, int | float) for v in values):
            out[key] = round(sum(values) / len(values), 3)
            out[f"{key}_each"] = values
    return out


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "—"
    r = value / base
    if r >= 10:
        return f"{r:.0f}x"
    if r >= 0.1:
        return f"{r:.2f}x"
    return f"{r:.2g}x"


def _get(res: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return None
        res = res[key]
    return res


def _ok(*parts: dict[str, Any] | None) -> str:
    present = [p for p in parts if p is not None]
    if not present:
        return "—"
    return "✓" if all(p.get("verified") for p in present) else "✗"


def _cell(part: dict[str, Any] | None, base: dict[str, Any] | None, keys: Sequence[str], digits: int = 2,
          with_ratio: bool = True) -> str:
    """``v1 / v2 (r1 / r2)``: the figures of ``part`` and their ratios to the same figures of ``base``."""
    if part is None:
        return "—"
    values = [_get(part, k) for k in keys]
    text = " / ".join(_num(v, digits) for v in values)
    if not with_ratio or base is None:
        return text
    ratios = [_ratio(v, _get(base, k)) for v, k in zip(values, keys, strict=True)]
    return f"{text} ({' / '.join(ratios)})"


def tables(res: dict[str, Any], sizes: Sizes) -> str:
    keys = systems(res)
    arq_row = res[ARQ]
    ideal = next((_get(res[k], "D", "ideal_s") for k in keys if _get(res[k], "D", "ideal_s")), None)
    lines = [
        "Each figure is followed by its ratio to `arq default` in this run (↑ higher is better, ↓ lower).",
        "",
        f"| system | A enqueue p50 / p99 ms ↓ | A enqueue jobs/s ↑ | B drain {sizes.n_jobs:,} jobs/s ↑ "
        f"| C round trip p50 / p99 ms ↓ | D {sizes.n_fan:,} x 10 ms wall s ↓ (ideal {_num(ideal)}) "
        "| D via Hive.map s ↓ | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        row = res[key]
        if not row:
            continue
        a, b, c, d, dm = row.get("A"), row.get("B_mean") or row.get("B"), row.get("C"), row.get("D"), row.get("D_map")
        cells = [
            label(key),
            _cell(a, arq_row.get("A"), ("p50_ms", "p99_ms"), 3),
            _cell(a, arq_row.get("A"), ("jobs_per_s",)),
            _cell(b, arq_row.get("B_mean"), ("jobs_per_s",)),
            _cell(c, arq_row.get("C"), ("p50_ms", "p99_ms"), 1),
            _cell(d, arq_row.get("D"), ("wall_s",)),
            _cell(dm, arq_row.get("D"), ("wall_s",)),
            _ok(a, b, c, d, dm),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    fast = res[ARQ_FAST]
    lines += ["", "The hive rows against `arq poll 0.01` (ARQ tuned to poll every 10 ms; ratios):", ""]
    for key in keys:
        if not key.startswith("hive-") or not res[key]:
            continue
        row = res[key]
        parts = [
            f"B jobs/s ↑ {_ratio(_get(row, 'B_mean', 'jobs_per_s'), _get(fast, 'B', 'jobs_per_s'))}",
            f"C p50 ↓ {_ratio(_get(row, 'C', 'p50_ms'), _get(fast, 'C', 'p50_ms'))}",
            f"C p99 ↓ {_ratio(_get(row, 'C', 'p99_ms'), _get(fast, 'C', 'p99_ms'))}",
            f"D ↓ {_ratio(_get(row, 'D', 'wall_s'), _get(fast, 'D', 'wall_s'))}",
            f"D via Hive.map ↓ {_ratio(_get(row, 'D_map', 'wall_s'), _get(fast, 'D', 'wall_s'))}",
        ]
        lines.append(f"- {key}: " + ", ".join(parts))

    lines += ["", "Diagnostics (B: from the first job seen to the last; CPU and commands on the private server):", "",
              "| system | A Redis commands per enqueue | B Redis commands per job | B CPU ms per job: workers (sum) "
              "| B CPU ms per job: Redis | B spawn → last job s | B jobs/s per repetition | D enqueue phase s |",
              "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        row = res[key]
        if not row:
            continue
        b = row.get("B_mean") or row.get("B") or {}
        each = b.get("jobs_per_s_each") or ([b["jobs_per_s"]] if b.get("jobs_per_s") else [])
        cells = [
            label(key),
            _num(_get(row, "A", "redis_commands_per_job"), 1),
            _num(b.get("redis_commands_per_job"), 1),
            _num(b.get("worker_cpu_ms_per_job"), 3),
            _num(b.get("redis_cpu_ms_per_job"), 3),
            _num(b.get("spawn_to_done_s")),
            " / ".join(_num(v) for v in each) or "—",
            _num(_get(row, "D", "enqueue_s")),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Goals of issue 9 (drain ≥ 1.5x Dramatiq's is measured with the peers harness, not here):", ""]
    if sizes != FULL:
        lines.append("- not judged: the goals are for the full sizes (run without --quick)")
    else:
        for key in keys:
            if key.startswith("hive-") and res[key]:
                lines.append(f"- {key}: " + "; ".join(goals(res[key])))

    notes = []
    for key in keys:
        for rep in ("B", "B2"):
            part = res[key].get(rep)
            if part and part.get("dnf"):
                notes.append(f"B {label(key)} ({rep}) did not finish in {sizes.b_budget_s:g} s "
                             f"({part.get('completed')} done, {part.get('observed_jobs_per_s')} jobs/s)")
        part = res[key].get("C")
        if part and not part.get("complete"):
            notes.append(f"C {label(key)}: n={part['n']} of {part['n_planned']} "
                         f"(stopped at the {sizes.c_budget_s:g} s budget)")
    notes += [f"error: {e}" for e in res.get("errors", [])]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def _goal(what: str, value: float | None, limit: float, unit: str) -> str:
    if value is None:
        return f"{what} ≤ {limit:g} {unit}: not measured"
    if value <= limit:
        return f"{what} {value:.3g} ≤ {limit:g} {unit}: met"
    over = f"{value / limit:.2f}x the goal, +{value - limit:.2g} {unit}"
    return f"{what} {value:.3g} > {limit:g} {unit}: NOT met ({over})"


def goals(row: dict[str, Any]) -> list[str]:
    return [
        _goal("enqueue p50", _get(row, "A", "p50_ms"), GOAL_ENQUEUE_P50_MS, "ms"),
        _goal("enqueue p99", _get(row, "A", "p99_ms"), GOAL_ENQUEUE_P99_MS, "ms"),
        _goal("round trip p50", _get(row, "C", "p50_ms"), GOAL_ROUNDTRIP_P50_MS, "ms"),
        _goal("D (submit_many)", _get(row, "D", "wall_s"), GOAL_FANOUT_S, "s"),
        _goal("D (Hive.map)", _get(row, "D_map", "wall_s"), GOAL_FANOUT_S, "s"),
    ]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(url: str, private: bool, server_version: str, brokers: Sequence[str]) -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    notes = {
        hive_key(b): f"broker {b}; hive defaults otherwise (poll_interval 0.05 s for arq, blocking reads for "
                     "streams); client loads bench.jobs; spores: python -m hive_framework spore --app bench.jobs "
                     "--concurrency 50"
        for b in brokers
    }
    notes[ARQ] = ("python -m arq bench.jobs.ArqWorkerSettings, max_jobs=50, defaults otherwise "
                  "(poll_delay 0.5 s, pickle, results kept 3600 s, INFO log line per job); "
                  "job.result() default poll 0.5 s")
    notes[ARQ_FAST] = "same, but worker poll_delay=0.01 and job.result(poll_delay=0.01)"
    return {
        "python": platform.python_version(), "python_executable": sys.executable,
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "hive_framework": hive_framework.__version__, "arq": arq.VERSION, "redis_server": server_version,
        "redis_py": _dist_version("redis"), "hiredis": _dist_version("hiredis"),
        "redis": "private redis-server (--save '' --appendonly no)" if private else support.mask(url),
        "git": rev, "worker_shape": f"{PROCS} processes x {CONCURRENCY} slots",
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "notes": notes,
    }


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%dT%H%M%S")
    private = None if args.redis_url else support.PrivateRedis()
    url = args.redis_url or private.url  # type: ignore[union-attr]
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-logs-"))
    ns = Namespace(stamp)
    bench = Bench(url, ns, sizes, log_dir, private=private is not None, brokers=args.brokers)
    t0 = time.perf_counter()
    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1):
        log(f"warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs: other work will skew the figures")
    try:
        try:
            server = await bench.admin.info("server")
        except Exception as exc:
            raise SystemExit(f"no Redis answers at {support.mask(url)}: {exc}") from None
        log(f"Redis {server.get('redis_version')} at {support.mask(url)}"
            f"{' (private)' if private else ''}; namespace {ns.root}; brokers {','.join(args.brokers)}; "
            f"worker logs in {log_dir}")
        res = await bench.run()
    finally:
        deleted = await bench.cleanup()
        log(f"deleted {deleted} keys of this run")
        if private is not None:
            private.stop()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["sizes"] = asdict(sizes)
    res["stamp"] = stamp
    res["quick"] = args.quick
    res["brokers"] = list(args.brokers)
    res["env"] = environment(url, private is not None, str(server.get("redis_version")), args.brokers)
    res["env"]["loadavg_at_start"] = [round(x, 2) for x in load]
    md = tables(res, sizes)
    res["table_md"] = md
    out_path = save_result(f"run-{stamp}{'-quick' if args.quick else ''}", res)
    env = res["env"]
    print(f"## hive {hive_framework.__version__} ({', '.join(hive_key(b) for b in args.brokers)}) vs arq "
          f"{arq.VERSION} — {stamp}{' (quick)' if args.quick else ''}, {env['worker_shape']}, "
          f"Redis {env['redis_server']}, Python {env['python']}, {env['cpus']} CPUs, "
          f"hiredis {env['hiredis'] or 'not installed'}\n")
    print(md)
    print(f"\nrun took {res['wall_s']} s; load average {load[0]:.2f} at start, {env['loadavg_at_end'][0]:.2f} "
          f"at end; JSON: {out_path.relative_to(ROOT)}")
    verified = [p for key in systems(res) for p in res[key].values() if isinstance(p, dict) and "verified" in p]
    if verified and all(p["verified"] for p in verified) and not res["errors"]:
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"some figures could not be verified; worker logs kept in {log_dir}", file=sys.stderr)
    return 1


def parse_brokers(text: str) -> list[str]:
    brokers = list(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    unknown = [b for b in brokers if b not in BROKERS]
    if not brokers or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(BROKERS)}, got {text!r}")
    return brokers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", type=parse_brokers, default=list(BROKERS), metavar="streams,arq",
                        help="hive brokers to measure, each a row beside raw ARQ (default: both)")
    parser.add_argument("--redis-url", help="use this Redis (keys namespaced and deleted after; never "
                        "flushed) instead of a private redis-server")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of a few seconds")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
