#!/usr/bin/env python3
"""Many clients, many spores: hive beside Dramatiq with the same process counts, in one run (issue 18).

    python bench/many_clients.py [--spores 8] [--slots 50] [--clients 32] [--reps 2] [--quick]
                                 [--dramatiq-python /tmp/peers-venv/bin/python]

Issue 18: "drain and round trip with 8 spore processes x 50 slots and 32 concurrent submitting clients (on
this machine the CPU is shared: report the ratio to Dramatiq with the same process counts in the same run)".

On a private ``redis-server`` (free port, no persistence, FLUSHDB between systems, stopped by its pid). Per
system and repetition:

* workers: hive: ``--spores`` processes of ``python -m hive_framework spore --app bench.jobs --concurrency
  SLOTS`` (streams broker, hive's defaults otherwise); Dramatiq 2.x: ``dramatiq bench.many_dramatiq
  --processes SPORES --threads SLOTS`` (RedisBroker, Results middleware with RedisBackend; its own defaults
  otherwise), waited for until every process is up;
* ``--clients`` separate client processes (a real deployment's web workers, not asyncio tasks in one
  process), each warmed up by 2 round trips, then released together:
  1. drain: each client submits K no-op tasks one call at a time (hive ``Hive.submit``; Dramatiq
     ``noop.send``) while the workers run them; the figure is all clients' tasks / (release -> the counter
     reaching the total), polled every 5 ms: tasks submitted and run end to end, concurrently;
  2. round trip: each client runs R sequential "submit ``echo(i)``, wait for its result" (hive
     ``Hive.run``, a BLPOP; Dramatiq ``get_result(block=True)``, a BRPOPLPUSH); p50/p99 over all clients.

CPU per task (workers with their children, clients, Redis) is read around each part; the clients stay
alive until it has been read.

Every task ``INCR``s a counter, so each figure is verified. Systems take turns (hive, Dramatiq, Dramatiq,
hive with ``--reps 2``) so drift of a shared machine hits both; the table shows the mean per system and the
ratio hive / Dramatiq. Without a Python where dramatiq is importable, hive is reported alone. Writes
``bench/results/many-clients-<stamp>-<commit>.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from bench import support  # noqa: E402
from bench.support import Namespace, PrivateRedis, Workers, log, pct, save_result, short_commit  # noqa: E402
from hive_framework import HiveConfig  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

DEFAULT_DRAMATIQ_PY = "/tmp/peers-venv/bin/python"
HIVE = "hive"
DRAMATIQ = "dramatiq"


@dataclass(frozen=True)
class Sizes:
    n_submit: int  # per client, drain part
    n_rt: int  # per client, round trips
    budget_s: float


FULL = Sizes(n_submit=500, n_rt=30, budget_s=300.0)
QUICK = Sizes(n_submit=40, n_rt=5, budget_s=120.0)


# --- the hive client process -----------------------------------------------------------------------


async def hive_client(client_id: int) -> None:
    """One hive client: the protocol of bench/many_dramatiq.py's ``client``, through hive's public API."""
    n_submit = int(os.environ["BENCH_N_SUBMIT"])
    n_rt = int(os.environ["BENCH_N_RT"])
    control = os.environ["BENCH_CONTROL"]
    config = HiveConfig.load(environ=dict(os.environ), env_file=os.devnull, toml_file=None)
    hive = await Hive(Kernel(config, apps=["bench.jobs"])).open()
    r = AsyncRedis.from_url(config.redis_url)
    try:
        for k in range(2):
            await hive.run("bench.echo", {"x": -1 - k}, timeout=120)
        await r.rpush(f"{control}:ready", client_id)
        await r.blpop([f"{control}:go:submit"], timeout=600)
        lat: list[float] = []
        t0 = time.perf_counter()
        for i in range(n_submit):
            a = time.perf_counter()
            await hive.submit("bench.noop", {"i": client_id * n_submit + i})
            lat.append(time.perf_counter() - a)
        await r.rpush(f"{control}:done:submit",
                      json.dumps({"id": client_id, "wall_s": time.perf_counter() - t0, "lat": lat}))
        await r.blpop([f"{control}:go:rt"], timeout=600)
        rtt: list[float] = []
        wrong = 0
        for i in range(n_rt):
            a = time.perf_counter()
            got = await hive.run("bench.echo", {"x": i}, timeout=120)
            rtt.append(time.perf_counter() - a)
            wrong += got != i
        await r.rpush(f"{control}:done:rt", json.dumps({"id": client_id, "lat": rtt, "wrong": wrong}))
        await r.blpop([f"{control}:go:exit"], timeout=600)  # alive until the runner has read its CPU time
    finally:
        await r.aclose()
        await hive.close()


def cpu_seconds(workers: Workers) -> float:
    """User + system CPU of the processes and their children (Dramatiq's CLI forks its worker processes)."""
    total = 0.0
    for proc in workers.procs:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(proc.pid)
            for each in (parent, *parent.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = each.cpu_times()
                    total += times.user + times.system
    return total


# --- the runner ------------------------------------------------------------------------------------


class Run:
    """One private server; measures one system at a time with the same shape and sizes."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, url: str, log_dir: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.url = url
        self.log_dir = log_dir
        self.ns = Namespace(time.strftime("%Y%m%dT%H%M%S"))
        self.config = self.ns.hive_config(url, args.slots)
        self.admin = AsyncRedis.from_url(url)
        self.counter_reads = 0

    async def counter(self) -> int:
        self.counter_reads += 1
        return int(await self.admin.get(self.ns.counter) or 0)

    async def cpu(self, workers: Workers, clients: Workers) -> tuple[float, float, float]:
        """CPU seconds used so far by the workers, the clients and the Redis server."""
        info = await self.admin.info("cpu")
        return cpu_seconds(workers), cpu_seconds(clients), float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def commands_per_task(self, n: int) -> dict[str, float]:
        """Calls per task of each Redis command since the last CONFIG RESETSTAT (commands inside Lua scripts
        included), most frequent first; the runner's INFO, CONFIG and counter reads (GET) left out."""
        raw = await self.admin.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()}
        calls["get"] = calls.get("get", 0) - self.counter_reads
        skip = {"info", "config|resetstat"}
        return {k: round(c / n, 2) for k, c in sorted(calls.items(), key=lambda kv: -kv[1]) if k not in skip}

    @staticmethod
    def cpu_per_task(before: tuple[float, float, float], after: tuple[float, float, float],
                     n: int) -> dict[str, float]:
        """CPU ms per task of each side between two readings of :meth:`cpu`."""
        names = ("workers", "clients", "redis")
        return {f"cpu_ms_per_task_{k}": round((b - a) / n * 1e3, 3)
                for k, a, b in zip(names, before, after, strict=True)}

    def env(self, system: str) -> dict[str, str]:
        env = support.spore_env(self.config, self.ns.counter) if system == HIVE else support.base_env()
        env.update(BENCH_REDIS_URL=self.url, BENCH_COUNTER_KEY=self.ns.counter,
                   BENCH_N_SUBMIT=str(self.sizes.n_submit), BENCH_N_RT=str(self.sizes.n_rt),
                   BENCH_CONTROL=f"{self.ns.root}:control")
        return env

    def start_workers(self, system: str, rep: int) -> Workers:
        a = self.args
        if system == HIVE:
            argvs = support.spore_argvs(a.spores, a.slots, f"many-{rep}")
        else:
            argvs = [[a.dramatiq_python, "-m", "dramatiq", "bench.many_dramatiq",
                      "--processes", str(a.spores), "--threads", str(a.slots)]]
        return Workers(f"{system}-workers-{rep}", argvs, self.env(system), self.log_dir)

    async def wait_workers_up(self, system: str, workers: Workers) -> None:
        """Until every worker process serves: hive's spores are online nodes; Dramatiq's processes each
        log "Worker process is ready for action"."""
        deadline = time.monotonic() + 180
        hive = await Hive(Kernel(self.config, apps=["bench.jobs"])).open() if system == HIVE else None
        try:
            while time.monotonic() < deadline:
                workers.check_alive()
                if hive is not None:
                    up = len(await hive.nodes())  # a node's heartbeat key expires when its spore stops
                else:
                    workers.tail()  # flushes
                    up = workers.log_path.read_text(errors="replace").count("ready for action")
                if up >= self.args.spores:
                    return
                await asyncio.sleep(0.2)
        finally:
            if hive is not None:
                await hive.close()
        raise RuntimeError(f"{workers.label}: not all {self.args.spores} worker processes came up:\n{workers.tail()}")

    def start_clients(self, system: str) -> Workers:
        if system == HIVE:
            argvs = [[sys.executable, str(ROOT / "bench" / "many_clients.py"), "--client", str(i)]
                     for i in range(self.args.clients)]
        else:
            argvs = [[self.args.dramatiq_python, str(ROOT / "bench" / "many_dramatiq.py"), str(i)]
                     for i in range(self.args.clients)]
        return Workers(f"{system}-clients", argvs, self.env(system), self.log_dir)

    async def collect(self, key: str, n: int, clients: Workers) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + self.sizes.budget_s
        while len(out) < n:
            got = await self.admin.blpop([key], timeout=1)
            if got:
                out.append(json.loads(got[1]))
            elif time.monotonic() > deadline:
                raise RuntimeError(f"{key}: {len(out)} of {n} clients reported")
            else:
                clients.check_alive()
        return out

    async def measure(self, system: str, rep: int) -> dict[str, Any]:
        a, s = self.args, self.sizes
        control = f"{self.ns.root}:control"
        await self.admin.flushdb()
        out: dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
        workers = self.start_workers(system, rep)
        clients: Workers | None = None
        try:
            await self.wait_workers_up(system, workers)
            log(f"{system} rep {rep}: {a.spores} worker processes up; starting {a.clients} client processes")
            clients = self.start_clients(system)
            for _ in range(a.clients):
                if not await self.admin.blpop([f"{control}:ready"], timeout=s.budget_s):
                    clients.check_alive()
                    raise RuntimeError(f"{system}: clients did not all get ready")
            await self.admin.set(self.ns.counter, 0)
            total = a.clients * s.n_submit
            log(f"{system} rep {rep}: drain, {a.clients} clients x {s.n_submit} submits")
            await self.admin.config_resetstat()
            self.counter_reads = 0
            cpu0 = await self.cpu(workers, clients)
            t0 = time.perf_counter()
            await self.admin.rpush(f"{control}:go:submit", *range(a.clients))
            deadline = t0 + s.budget_s
            while (count := await self.counter()) < total:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{system}: drain reached {count} of {total} in {s.budget_s:g} s")
                workers.check_alive()
                await asyncio.sleep(0.005)
            span = time.perf_counter() - t0
            cpu1 = await self.cpu(workers, clients)
            reports = await self.collect(f"{control}:done:submit", a.clients, clients)
            lat = [x for r in reports for x in r["lat"]]
            await asyncio.sleep(0.3)
            out["drain"] = {"n": total, "jobs_per_s": round(total / span, 1), "release_to_last_s": round(span, 3),
                            "submit_p50_ms": round(pct(lat, 50) * 1e3, 3),
                            "submit_p99_ms": round(pct(lat, 99) * 1e3, 3),
                            "slowest_client_submit_s": round(max(r["wall_s"] for r in reports), 3),
                            **self.cpu_per_task(cpu0, cpu1, total),
                            "redis_calls_per_task": await self.commands_per_task(total),
                            "verified": await self.counter() == total}
            log(f"{system} rep {rep}: round trips, {a.clients} clients x {s.n_rt}")
            await self.admin.config_resetstat()
            self.counter_reads = 0
            base = await self.counter()
            cpu0 = await self.cpu(workers, clients)
            await self.admin.rpush(f"{control}:go:rt", *range(a.clients))
            reports = await self.collect(f"{control}:done:rt", a.clients, clients)
            cpu1 = await self.cpu(workers, clients)
            await self.admin.rpush(f"{control}:go:exit", *range(a.clients))
            rtt = [x for r in reports for x in r["lat"]]
            await asyncio.sleep(0.3)
            n_rt = a.clients * s.n_rt
            wrong = sum(r["wrong"] for r in reports)
            out["rt"] = {"n": len(rtt), "p50_ms": round(pct(rtt, 50) * 1e3, 3), "p99_ms": round(pct(rtt, 99) * 1e3, 3),
                         "mean_ms": round(sum(rtt) / len(rtt) * 1e3, 3), "wrong": wrong,
                         **self.cpu_per_task(cpu0, cpu1, n_rt),
                         "redis_calls_per_task": await self.commands_per_task(n_rt),
                         "verified": wrong == 0 and len(rtt) == n_rt and await self.counter() - base == n_rt}
            log(f"{system} rep {rep}: drain {out['drain']['jobs_per_s']:,.0f} jobs/s, round trip p50 "
                f"{out['rt']['p50_ms']:.1f} ms p99 {out['rt']['p99_ms']:.1f} ms")
        finally:
            if clients is not None:
                out["clients_stop"] = clients.stop(grace_s=10)
            out["workers_stop"] = workers.stop()
        return out


# --- report ----------------------------------------------------------------------------------------

#: (label, part, key, higher is better)
FIGURES = [
    ("drain jobs/s (submitted and run) ↑", "drain", "jobs_per_s", True),
    ("client submit p50 ms ↓", "drain", "submit_p50_ms", False),
    ("client submit p99 ms ↓", "drain", "submit_p99_ms", False),
    ("round trip p50 ms ↓", "rt", "p50_ms", False),
    ("round trip p99 ms ↓", "rt", "p99_ms", False),
    ("drain CPU ms per task: workers ↓", "drain", "cpu_ms_per_task_workers", False),
    ("drain CPU ms per task: clients ↓", "drain", "cpu_ms_per_task_clients", False),
    ("drain CPU ms per task: Redis ↓", "drain", "cpu_ms_per_task_redis", False),
    ("round trip CPU ms per task: workers ↓", "rt", "cpu_ms_per_task_workers", False),
    ("round trip CPU ms per task: clients ↓", "rt", "cpu_ms_per_task_clients", False),
    ("round trip CPU ms per task: Redis ↓", "rt", "cpu_ms_per_task_redis", False),
]


def mean_figures(reps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for _, part, key, _ in FIGURES:
        values = [r[part][key] for r in reps if part in r]
        if values:
            out.setdefault(part, {})[key] = round(sum(values) / len(values), 3)
            out[part][f"{key}_each"] = values  # type: ignore[assignment]
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(res: dict[str, Any]) -> str:
    hive, dram = res["mean"].get(HIVE, {}), res["mean"].get(DRAMATIQ)
    lines = ["| figure | hive | dramatiq | hive / dramatiq | each repetition: hive; dramatiq |",
             "|---|---|---|---|---|"]
    for name, part, key, _ in FIGURES:
        h = hive.get(part, {}).get(key)
        d = dram.get(part, {}).get(key) if dram else None
        ratio = f"{h / d:.2f}x" if h and d else "—"
        each_h = " / ".join(fmt(v) for v in hive.get(part, {}).get(f"{key}_each", []))  # type: ignore[attr-defined]
        each_d = " / ".join(fmt(v) for v in (dram or {}).get(part, {}).get(f"{key}_each", []))  # type: ignore[attr-defined]
        lines.append(f"| {name} | {fmt(h)} | {fmt(d)} | {ratio} | {each_h}; {each_d or '—'} |")
    return "\n".join(lines)


def dramatiq_version(python: str) -> str | None:
    """Dramatiq's version in ``python``, or None when it cannot be imported there."""
    if not Path(python).exists():
        return None
    try:
        done = subprocess.run([python, "-c", "import dramatiq, redis; print(dramatiq.__version__)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dram_version = dramatiq_version(args.dramatiq_python)
    if dram_version is None:
        log(f"dramatiq is not importable with {args.dramatiq_python}: hive is reported alone "
            "(python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install 'dramatiq[redis]' redis)")
    systems = [HIVE] if dram_version is None else [HIVE, DRAMATIQ]
    order = [(sys_, rep) for rep in range(args.reps)
             for sys_ in (systems if rep % 2 == 0 else list(reversed(systems)))]
    server = PrivateRedis(extra_args=["--maxclients", "10000"])
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-many-logs-"))
    run = Run(args, sizes, server.url, log_dir)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"stamp": stamp, "quick": args.quick, "sizes": asdict(sizes),
                           "shape": {"worker_processes": args.spores, "slots_per_process": args.slots,
                                     "client_processes": args.clients},
                           "runs": [], "errors": []}
    try:
        log(f"private Redis on port {server.port}; order {order}; logs in {log_dir}; load {load0[0]:.2f}")
        res["redis_server"] = (await run.admin.info("server"))["redis_version"]
        for system, rep in order:
            try:
                res["runs"].append({"system": system, "rep": rep, **await run.measure(system, rep)})
            except Exception as exc:  # keep the other system's figures
                log(f"{system} rep {rep} failed: {type(exc).__name__}: {exc}")
                res["errors"].append(f"{system} rep {rep}: {type(exc).__name__}: {exc}")
    finally:
        await run.admin.aclose()
        server.stop()
    res["mean"] = {s: mean_figures([r for r in res["runs"] if r["system"] == s]) for s in systems}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["env"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "git": short_commit(),
                  "dramatiq": dram_version, "dramatiq_python": args.dramatiq_python if dram_version else None,
                  "loadavg_at_start": [round(x, 2) for x in load0],
                  "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    md = table(res)
    res["table_md"] = md
    out_path = save_result(f"many-clients-{stamp}{'-quick' if args.quick else ''}", res)
    print(f"## many clients: {args.spores} worker processes x {args.slots} slots, {args.clients} client processes "
          f"— {stamp}{' (quick)' if args.quick else ''}, Redis {res['redis_server']}, {os.cpu_count()} CPUs, "
          f"dramatiq {dram_version or 'not installed'}\n")
    print(md)
    print(f"\n{args.clients} x {sizes.n_submit} tasks drained, {args.clients} x {sizes.n_rt} round trips per "
          f"repetition; means of {args.reps} repetition(s) per system, order {[f'{s}#{r}' for s, r in order]}.")
    for run_ in res["runs"]:
        if run_["rep"] == 0:
            for part in ("drain", "rt"):
                calls = run_.get(part, {}).get("redis_calls_per_task", {})
                top = ", ".join(f"{k} {v:g}" for k, v in list(calls.items())[:10])
                print(f"- {run_['system']} {part}: Redis calls per task (first repetition): {top}")
    for err in res["errors"]:
        print(f"- error: {err}")
    loads = ", ".join(f"{r['system']}#{r['rep']} {r['loadavg_at_start'][0]:.2f}" for r in res["runs"])
    print(f"\nload average (1 min) at the start of each run: {loads}; at end {res['env']['loadavg_at_end'][0]:.2f}"
          f"\nrun took {res['wall_s']} s; JSON: {out_path.relative_to(ROOT)}")
    checks = [r[p]["verified"] for r in res["runs"] for p in ("drain", "rt") if p in r]
    if checks and all(checks) and not res["errors"]:
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"some figures could not be verified; worker and client logs kept in {log_dir}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spores", type=int, default=8, help="worker processes per system (default 8)")
    parser.add_argument("--slots", type=int, default=50, help="slots (hive) / threads (Dramatiq) per process")
    parser.add_argument("--clients", type=int, default=32, help="client processes (default 32)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per system, in mirrored order")
    parser.add_argument("--dramatiq-python", default=DEFAULT_DRAMATIQ_PY,
                        help=f"a Python with dramatiq[redis] installed (default {DEFAULT_DRAMATIQ_PY})")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)  # a client process
    args = parser.parse_args()
    if args.client is not None:
        asyncio.run(hive_client(args.client))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
