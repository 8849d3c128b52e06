#!/usr/bin/env python3
"""hive vs raw ARQ, same Redis, one run: prints a Markdown table, writes JSON to bench/results/<stamp>.json.

    python bench/run.py [--redis-url URL] [--quick]

Workloads (jobs are in bench/jobs.py; every job INCRs a counter so each run is verified):

A  one client enqueues N no-op jobs one call at a time, no worker running: per-call p50/p99, jobs/s.
   hive and ARQ take turns in 4 blocks of N/4 so that drift on a busy machine hits both alike.
B  2 worker processes (hive: ``python -m hive_framework spore``; ARQ: ``python -m arq``), 50 slots
   each, drain A's N jobs: jobs/s from the first job seen to the last (counter polled every 5 ms),
   and, on the private server, Redis commands and worker/Redis CPU per job over that span.
C  one job at a time, enqueue + wait for its result: round trip p50/p99. hive: ``Hive.run``
   (BLPOP on the task's done list); ARQ: ``job.result()`` with its default 0.5 s poll, and a second ARQ
   row with workers and ``job.result`` polling every 0.01 s.
D  1,000 jobs that each ``await asyncio.sleep(0.01)``, enqueued at once (hive: ``Hive.submit_many``
   then ``gather`` of ``Hive.result``; ARQ: ``enqueue_job`` each, then ``gather`` of ``job.result``),
   wall time vs ideal = 1000 * 0.01 / 100 slots; plus a hive row through ``Hive.map``.

Without ``--redis-url`` a private ``redis-server`` is started on a free port (no persistence) and
stopped by its pid at the end. With ``--redis-url`` every key lives under a unique ``bench:<stamp>:*``
namespace (plus ARQ's per-job keys of this run's jobs), all deleted at the end; nothing is flushed.
Progress goes to stderr, the table to stdout. Exit status 1 when a figure could not be verified.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
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
from bench.support import Namespace, Workers, log, pct  # noqa: E402
from hive_framework.default_plugins.broker import TaskSpec  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

PROCS = 2
CONCURRENCY = 50
ARQ_DEFAULT_POLL_S = 0.5
ARQ_FAST_POLL_S = 0.01


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
    def __init__(self, url: str, ns: Namespace, sizes: Sizes, log_dir: Path, private: bool) -> None:
        self.url = url
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
        total = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
        return total - self.counter_reads

    # --- the four workloads ------------------------------------------------------------------------

    async def enqueue(self, systems: dict[str, Callable[[int], Awaitable[None]]], n: int,
                      blocks: int = 4) -> dict[str, dict[str, Any]]:
        """A: n sequential enqueue calls per system, each timed; the systems take turns in ``blocks``
        blocks (hive, arq, hive, arq...) so that drift on a shared machine hits both alike."""
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

    async def hive_client(self) -> Hive:
        config = self.ns.hive_config(self.url, CONCURRENCY)
        return await Hive(Kernel(config, apps=["bench.jobs"])).open()

    async def arq_pool(self, queue: str) -> ArqRedis:
        return await create_pool(RedisSettings.from_dsn(self.url), default_queue_name=queue)

    async def both_a(self, client: Hive, pool: ArqRedis) -> dict[str, dict[str, Any]]:
        async def hive_one(i: int) -> None:
            await client.submit("bench.noop", {"i": i})

        async def arq_one(i: int) -> None:
            job = await pool.enqueue_job("noop", i)
            assert job is not None
            self.arq_job_ids.append(job.job_id)

        return await self.enqueue({"hive": hive_one, "arq": arq_one}, self.sizes.n_jobs)

    def start_spores(self) -> Workers:
        config = self.ns.hive_config(self.url, CONCURRENCY)
        argvs = support.spore_argvs(PROCS, CONCURRENCY, self.ns.root.rsplit(":", 1)[-1])
        return Workers("hive-spores", argvs, support.spore_env(config, self.ns.counter), self.log_dir)

    def start_arq(self, variant: str, poll_delay: float | None) -> Workers:
        env = support.arq_env(self.url, self.ns.arq_queue(variant), CONCURRENCY, poll_delay, self.ns.counter)
        return Workers(f"arq-{variant}", support.arq_argvs(PROCS), env, self.log_dir)

    async def hive_bcd(self, client: Hive) -> dict[str, Any]:
        out: dict[str, Any] = {}
        await self.reset_counter()
        workers = self.start_spores()
        try:
            log(f"hive B: draining {self.sizes.n_jobs} jobs with {PROCS} spores")
            out["B"] = await self.drain(workers, self.sizes.n_jobs)

            async def rt(x: int) -> Any:
                return await client.run("bench.echo", {"x": x}, timeout=60)

            log(f"hive C: {self.sizes.n_rt} round trips")
            out["C"] = await self.roundtrips(rt, self.sizes.n_rt)

            async def fan(xs: list[int]) -> tuple[list[Any], float]:
                t0 = time.perf_counter()
                specs = [TaskSpec(task_type="bench.sleepy", payload={"x": x}) for x in xs]
                ids = await client.submit_many(specs)
                enqueue_s = time.perf_counter() - t0
                return list(await asyncio.gather(*(client.result(t, timeout=90) for t in ids))), enqueue_s

            log(f"hive D: fan-out of {self.sizes.n_fan} (submit_many, then gather Hive.result)")
            out["D"] = await self.fanout(fan, self.sizes.n_fan)

            async def fan_map(xs: list[int]) -> tuple[list[Any], float]:
                return await client.map("bench.sleepy", [{"x": x} for x in xs], timeout=90), 0.0

            log(f"hive D: fan-out of {self.sizes.n_fan} (Hive.map)")
            out["D_map"] = await self.fanout(fan_map, self.sizes.n_fan)
        finally:
            out["workers_stop"] = workers.stop()
        return out

    async def arq_bcd(self, pool: ArqRedis, variant: str, poll_delay: float, with_b: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        await self.reset_counter()
        workers = self.start_arq(variant, None if poll_delay == ARQ_DEFAULT_POLL_S else poll_delay)
        try:
            if with_b:
                log(f"arq-{variant} B: draining {self.sizes.n_jobs} jobs with {PROCS} arq workers")
                out["B"] = await self.drain(workers, self.sizes.n_jobs)

            async def rt(x: int) -> Any:
                job = await pool.enqueue_job("echo", x)
                assert job is not None
                self.arq_job_ids.append(job.job_id)
                return await job.result(timeout=60, poll_delay=poll_delay)

            log(f"arq-{variant} C: up to {self.sizes.n_rt} round trips (budget {self.sizes.c_budget_s:g} s)")
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

            log(f"arq-{variant} D: fan-out of {self.sizes.n_fan}")
            out["D"] = await self.fanout(fan, self.sizes.n_fan)
        finally:
            out["workers_stop"] = workers.stop()
        return out

    async def b_again(self, system: str, client: Hive, pool: ArqRedis) -> dict[str, Any]:
        """B's second repetition: queue n no-op jobs again (untimed), start fresh workers, drain."""
        n = self.sizes.n_jobs
        await self.reset_counter()
        log(f"{system} B again: queueing {n} jobs, then draining them with fresh workers")
        if system == "hive":
            for lo in range(0, n, 1000):
                await client.submit_many([TaskSpec(task_type="bench.noop", payload={"i": i})
                                          for i in range(lo, min(n, lo + 1000))])
            workers = self.start_spores()
        else:
            for i in range(n):
                job = await pool.enqueue_job("noop", i)
                assert job is not None
                self.arq_job_ids.append(job.job_id)
            workers = self.start_arq("default", None)
        try:
            return {"B2": await self.drain(workers, n)}
        finally:
            workers.stop()

    async def run(self) -> dict[str, Any]:
        res: dict[str, Any] = {"hive": {}, "arq": {}, "arq_fast": {}, "errors": []}
        hive = await self.hive_client()
        pool = await self.arq_pool(self.ns.arq_queue("default"))
        fast_pool = await self.arq_pool(self.ns.arq_queue("fast"))
        try:
            await self.reset_counter()
            # A for both systems, taking turns, with no worker running anywhere
            log(f"A: enqueueing {self.sizes.n_jobs} jobs per system (hive and arq take turns)")
            both = await self.both_a(hive, pool)
            res["hive"]["A"], res["arq"]["A"] = both["hive"], both["arq"]
            # B runs twice per system in the order hive, arq, arq, hive: drift cancels out of the mean
            for key, block in (
                ("hive", lambda: self.hive_bcd(hive)),
                ("arq", lambda: self.arq_bcd(pool, "default", ARQ_DEFAULT_POLL_S, with_b=True)),
                ("arq_fast", lambda: self.arq_bcd(fast_pool, "fast", ARQ_FAST_POLL_S, with_b=False)),
                ("arq", lambda: self.b_again("arq", hive, pool)),
                ("hive", lambda: self.b_again("hive", hive, pool)),
            ):
                try:
                    res[key].update(await block())
                except Exception as exc:  # keep the other systems' figures
                    log(f"{key} failed: {type(exc).__name__}: {exc}")
                    res["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
            for key in ("hive", "arq"):
                reps = [res[key][b] for b in ("B", "B2") if b in res[key]]
                if reps:
                    res[key]["B_mean"] = mean_of(reps)
        finally:
            await hive.close()
            await pool.aclose()
            await fast_pool.aclose()
        return res

    async def cleanup(self) -> int:
        try:
            return await support.delete_run_keys(self.admin, self.ns, self.arq_job_ids)
        finally:
            await self.admin.aclose()


# --- report ------------------------------------------------------------------------------------------


def mean_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric figure over B's repetitions; verified only when every repetition was."""
    out: dict[str, Any] = {"reps": len(reps), "verified": all(r.get("verified") for r in reps)}
    for key in ("jobs_per_s", "spawn_to_done_s", "redis_commands_per_job", "worker_cpu_ms_per_job",
                "redis_cpu_ms_per_job"):
        values = [r.get(key) for r in reps]
        if all(isinstance(v, int | float) for v in values):
            out[key] = round(sum(values) / len(values), 3)
            out[f"{key}_each"] = values
    return out


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(hive: float | None, other: float | None) -> str:
    if not hive or not other:
        return "n/a"
    return f"{hive / other:.2f}x"


def _get(res: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return None
        res = res[key]
    return res


def _ok(*parts: dict[str, Any] | None) -> str:
    return "✓" if all(p is not None and p.get("verified") for p in parts) else "✗"


def table(res: dict[str, Any], sizes: Sizes) -> str:
    h, a, f = res["hive"], res["arq"], res["arq_fast"]
    rows: list[Sequence[str]] = []

    def pair(metric: str, hp: dict[str, Any] | None, ap: dict[str, Any] | None, k1: str,
             k2: str | None = None, digits: int = 2) -> None:
        hv1, av1 = _get(hp or {}, k1), _get(ap or {}, k1)
        if k2 is None:
            rows.append((metric, _num(hv1, digits), _num(av1, digits), _ratio(hv1, av1), _ok(hp, ap)))
            return
        hv2, av2 = _get(hp or {}, k2), _get(ap or {}, k2)
        rows.append((metric, f"{_num(hv1, digits)} / {_num(hv2, digits)}",
                     f"{_num(av1, digits)} / {_num(av2, digits)}",
                     f"{_ratio(hv1, av1)} / {_ratio(hv2, av2)}", _ok(hp, ap)))

    pair(f"A enqueue {sizes.n_jobs:,}, jobs/s ↑", h.get("A"), a.get("A"), "jobs_per_s")
    pair("A enqueue call p50 / p99 ms ↓", h.get("A"), a.get("A"), "p50_ms", "p99_ms", 3)
    pair("A Redis commands per enqueue ↓", h.get("A"), a.get("A"), "redis_commands_per_job", digits=1)
    for label, system in (("hive", h), ("arq", a)):
        for rep in ("B", "B2"):
            part = system.get(rep)
            if part and part.get("dnf"):
                log(f"{label} {rep} did not finish in {sizes.b_budget_s:g} s ({part.get('completed')} done, "
                    f"{part.get('observed_jobs_per_s')} jobs/s)")
    hb, ab = h.get("B_mean"), a.get("B_mean")
    reps = (hb or {}).get("reps", 0)
    pair(f"B drain {sizes.n_jobs:,} on {PROCS}x{CONCURRENCY}, jobs/s ↑ (mean of {reps})", hb, ab, "jobs_per_s")
    pair("B spawn → last job s ↓", hb, ab, "spawn_to_done_s")
    pair("B Redis commands per job ↓ (all clients)", hb, ab, "redis_commands_per_job", digits=1)
    pair("B CPU ms per job ↓: workers (sum of 2)", hb, ab, "worker_cpu_ms_per_job", digits=3)
    pair("B CPU ms per job ↓: Redis server", hb, ab, "redis_cpu_ms_per_job", digits=3)
    pair("C round trip p50 / p99 ms ↓ — arq default poll 0.5 s", h.get("C"), a.get("C"), "p50_ms", "p99_ms",
         1)
    pair("C round trip p50 / p99 ms ↓ — arq poll 0.01 s", h.get("C"), f.get("C"), "p50_ms", "p99_ms", 1)
    ideal = _get(h, "D", "ideal_s") or _get(a, "D", "ideal_s")
    pair(f"D fan-out {sizes.n_fan:,} x sleep 0.01, wall s ↓ (ideal {_num(ideal, 2)}) — arq default",
         h.get("D"), a.get("D"), "wall_s")
    pair("D fan-out wall s ↓ — arq poll 0.01 s", h.get("D"), f.get("D"), "wall_s")
    pair("D fan-out wall s ↓ — hive via Hive.map, arq default", h.get("D_map"), a.get("D"), "wall_s")

    lines = ["| metric (↑ higher is better, ↓ lower) | hive | arq | hive ÷ arq | verified |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = []
    for label, part in (("hive", hb), ("arq", ab)):
        if part and "jobs_per_s_each" in part:
            each = " / ".join(_num(v) for v in part["jobs_per_s_each"])
            notes.append(f"B {label}: jobs/s per repetition {each} (order: hive, arq, arq, hive)")
    for label, part in (("hive", h.get("C")), ("arq", a.get("C")), ("arq poll 0.01", f.get("C"))):
        if part and not part.get("complete"):
            notes.append(f"C {label}: n={part['n']} of {part['n_planned']} "
                         f"(stopped at the {sizes.c_budget_s:g} s budget)")
    for label, part in (("hive", h.get("D")), ("arq", a.get("D")), ("arq poll 0.01", f.get("D"))):
        if part:
            notes.append(f"D {label}: enqueue phase {part['enqueue_s']:.2f} s of {part['wall_s']:.2f} s")
    notes += [f"error: {e}" for e in res.get("errors", [])]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def environment(url: str, private: bool, server_version: str) -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "hive_framework": hive_framework.__version__, "arq": arq.VERSION, "redis_server": server_version,
        "redis": "private redis-server (--save '' --appendonly no)" if private else support.mask(url),
        "git": rev, "worker_shape": f"{PROCS} processes x {CONCURRENCY} slots",
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "notes": {
            "hive": "defaults (poll_interval 0.05 s, wakes on a freed slot); client loads bench.jobs; "
                    "spores: python -m hive_framework spore --app bench.jobs --concurrency 50",
            "arq": "python -m arq bench.jobs.ArqWorkerSettings, max_jobs=50, defaults otherwise "
                   "(poll_delay 0.5 s, pickle, results kept 3600 s, INFO log line per job); "
                   "job.result() default poll 0.5 s",
            "arq_fast": "same, but worker poll_delay=0.01 and job.result(poll_delay=0.01)",
        },
    }


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%dT%H%M%S")
    private = None if args.redis_url else support.PrivateRedis()
    url = args.redis_url or private.url  # type: ignore[union-attr]
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-logs-"))
    ns = Namespace(stamp)
    bench = Bench(url, ns, sizes, log_dir, private=private is not None)
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
            f"{' (private)' if private else ''}; namespace {ns.root}; worker logs in {log_dir}")
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
    res["env"] = environment(url, private is not None, str(server.get("redis_version")))
    res["env"]["loadavg_at_start"] = [round(x, 2) for x in load]
    md = table(res, sizes)
    res["table_md"] = md
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"## hive {hive_framework.__version__} vs arq {arq.VERSION} — {stamp}"
          f"{' (quick)' if args.quick else ''}, {res['env']['worker_shape']}, "
          f"Redis {res['env']['redis_server']}\n")
    print(md)
    print(f"\nrun took {res['wall_s']} s; JSON: {out_path.relative_to(ROOT)}")
    verified = [p for system in ("hive", "arq", "arq_fast") for p in res[system].values()
                if isinstance(p, dict) and "verified" in p]
    if verified and all(p["verified"] for p in verified) and not res["errors"]:
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"some figures could not be verified; worker logs kept in {log_dir}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="use this Redis (keys namespaced and deleted after; never "
                        "flushed) instead of a private redis-server")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of a few seconds")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
