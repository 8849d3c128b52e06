#!/usr/bin/env python3
"""Foreman and watchdog figures: routing cost over a big cluster, and how long a kill -9 costs a task.

    python bench/foreman.py [--redis-url URL] [--rounds N] [--calls N]

1. ``ForemanAgent.select_best_node`` over a snapshot of 1,000 synthetic nodes (25 % with a GPU, 10 %
   paused), per strategy (``load_score``, ``least_tasks``, ``round_robin``), without and with a
   ``{"gpu": True}`` requirement: p50/p99 per call in microseconds. Pure CPU, no I/O (the snapshot is
   taken beforehand); plus ``ForemanAgent.refresh()`` (the snapshot itself) from Redis with those 1,000
   heartbeats stored: p50/p99 in milliseconds.
2. Recovery after ``kill -9``: a spore runs a task that sleeps 60 s on its first start only; a second,
   idle spore waits. The first is killed with SIGKILL at a random moment within one lease-renewal period
   after the task started (so the heartbeat's and the lease's phase vary as for a crash at any time).
   Measured: kill -> node seen offline, and kill -> task re-run and completed on the other spore. Two
   modes: with a nexus (the watchdog requeues the zombie once the heartbeat expires) and without one
   (only ARQ's lease on the job brings it back). Settings are hive's defaults scaled down 10x (printed
   with the results): heartbeat 0.5 s (node TTL 3 x heartbeat = 1.5 s), watchdog 0.5 s, lease 3.0 s.
   With the real defaults (5 s, 5 s, 30 s) every delay scales by about 10.

Without ``--redis-url`` a private ``redis-server`` is started on a free port in a temp dir and stopped by
its pid. With ``--redis-url`` everything lives under a unique ``bench:<stamp>:*`` namespace, deleted at the
end (nothing is flushed). Progress goes to stderr, the table to stdout, JSON to
bench/results/foreman-<stamp>-<commit>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import subprocess
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
from bench.support import Namespace, log, pct, save_result  # noqa: E402
from hive_framework import (  # noqa: E402
    ForemanAgent,
    HiveConfig,
    MessageBroker,
    TaskStatus,
    wire,
)
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402
from hive_framework.models import NodeInfo  # noqa: E402
from hive_framework.testing import async_wait_until  # noqa: E402

N_NODES = 1_000
STRATEGIES = ("load_score", "least_tasks", "round_robin")
#: hive's defaults (heartbeat 5 s, watchdog 5 s, lease 30 s) scaled down 10x.
SCALED = {"heartbeat_interval": 0.5, "watchdog_interval": 0.5, "lease_seconds": 3.0}
JITTER = random.Random(9)
TASK_APP = "tests.apps.basic"  # its ``nap`` task sleeps on its first start only (``first_only``)


def synthetic_nodes(n: int, seed: int = 1) -> list[NodeInfo]:
    rng = random.Random(seed)
    return [
        NodeInfo(
            node_id=f"node-{i:04d}", node_name=f"node-{i:04d}", host=f"host-{i % 50}", pid=1000 + i,
            cpu_usage=rng.uniform(0, 100), memory_usage=rng.uniform(0, 100), active_tasks=rng.randint(0, 20),
            concurrency=rng.choice((4, 8, 16)), paused=rng.random() < 0.10,
            capabilities={"gpu": rng.random() < 0.25, "tags": rng.sample(["ml", "io", "eu", "us"], 2),
                          "free_memory_mb": rng.randint(256, 65536)},
        )
        for i in range(n)
    ]


def bench_select(config: HiveConfig, nodes: list[NodeInfo], calls: int) -> list[dict[str, Any]]:
    rows = []
    for strategy in STRATEGIES:
        kernel = Kernel(config.evolve(balancer=strategy), load_entry_points=False)
        foreman = ForemanAgent(MessageBroker(kernel))  # never connected: select_best_node reads the snapshot
        foreman.nodes = nodes
        for label, requirements in (("none", None), ('{"gpu": true}', {"gpu": True})):
            for _ in range(50):
                foreman.select_best_node(requirements)
            samples = []
            picked = set()
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                node = foreman.select_best_node(requirements)
                samples.append((time.perf_counter_ns() - t0) / 1000)
                picked.add(node)
            assert None not in picked, f"{strategy} found no node"
            rows.append({"strategy": strategy, "requirements": label, "calls": calls,
                         "p50_us": round(pct(samples, 50), 1), "p99_us": round(pct(samples, 99), 1),
                         "distinct_nodes_picked": len(picked)})
            log(f"select_best_node {strategy:<11} req={label:<14} p50 {rows[-1]['p50_us']} us")
    return rows


async def bench_refresh(config: HiveConfig, nodes: list[NodeInfo], rounds: int = 30) -> dict[str, Any]:
    broker = MessageBroker(Kernel(config, load_entry_points=False))
    await broker.connect()
    try:
        async with broker.redis.pipeline(transaction=False) as pipe:
            for info in nodes:
                data = wire.dumps(info)
                pipe.psetex(broker.keys.node(info.node_id), 600_000, data)
                pipe.sadd(broker.keys.nodes, info.node_id)
                pipe.hset(broker.keys.node_infos, mapping={info.node_id: data})
            await pipe.execute()
        foreman = ForemanAgent(broker)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await foreman.refresh()
            samples.append((time.perf_counter() - t0) * 1000)
        assert len(foreman.nodes) == len(nodes), "refresh did not see every node"
        return {"nodes": len(nodes), "rounds": rounds, "p50_ms": round(pct(samples, 50), 2),
                "p99_ms": round(pct(samples, 99), 2)}
    finally:
        await broker.redis.delete(broker.keys.node_infos, broker.keys.nodes,
                                  *[broker.keys.node(n.node_id) for n in nodes])
        await broker.disconnect()


class Proc:
    """A ``python -m hive_framework`` subprocess, logged to a file, stopped or killed by its own pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "hive_framework", *argv], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def until(predicate: Any, timeout: float, what: str) -> Any:
    return await async_wait_until(predicate, timeout, 0.01, what)


async def node_state(hive: Hive, name: str) -> NodeInfo | None:
    return next((n for n in await hive.nodes() if n.node_name == name), None)


async def bench_recovery(config: HiveConfig, rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    env = support.base_env()
    env.update(config.to_env())
    env["HIVE_APP"] = TASK_APP
    hive = Hive(Kernel(config, apps=[TASK_APP], load_entry_points=False))
    await hive.open()
    rescuer = Proc(["spore", "--name", "rescuer", "--concurrency", "1"], env, log_dir / "rescuer.log")
    results = []
    try:
        await until(lambda: node_state(hive, "rescuer"), 30, "the rescuer spore")
        for mode in ("nexus", "lease-only"):
            nexus = Proc(["nexus"], env, log_dir / "nexus.log") if mode == "nexus" else None
            for r in range(rounds):
                results.append(await one_recovery(hive, env, mode, f"victim-{mode}-{r}", log_dir))
                row = results[-1]
                log(f"{mode:<10} round {r + 1}: offline after {row['offline_s']} s, "
                    f"completed after {row['completed_s']} s ({row['rerun_by']})")
            if nexus is not None:
                nexus.stop()
    finally:
        rescuer.stop()
        await hive.close()
    return results


async def one_recovery(hive: Hive, env: dict[str, str], mode: str, name: str, log_dir: Path) -> dict[str, Any]:
    victim = Proc(["spore", "--name", name, "--concurrency", "1"], env, log_dir / f"{name}.log")
    await until(lambda: node_state(hive, name), 30, f"spore {name}")
    # Only the victim may take the task: the rescuer is paused until the task runs on the victim.
    await hive.broadcast("PAUSE", target_nodes=["rescuer"])

    async def rescuer_paused() -> bool:
        node = await node_state(hive, "rescuer")
        return node is not None and node.paused

    await until(rescuer_paused, 10, "the rescuer to pause")
    task_id = await hive.submit("nap", {"seconds": 60, "first_only": True})

    async def running_on_victim() -> bool:
        task = await hive.status(task_id)
        started = await hive.broker.redis.get(f"{hive.config.key_prefix}:test:starts:{task_id}")  # body began
        return task is not None and task.status == TaskStatus.RUNNING and task.assigned_node == name and started

    await until(running_on_victim, 30, "the task to run on the victim")
    await hive.broadcast("RESUME", target_nodes=["rescuer"])

    async def rescuer_resumed() -> bool:
        node = await node_state(hive, "rescuer")
        return node is not None and not node.paused

    await until(rescuer_resumed, 10, "the rescuer to resume")

    # Kill at a random moment within one lease-renewal period (a third of the lease, two heartbeats), so the
    # heartbeat's and the lease's phase at the kill vary as they would for a crash at any time.
    await asyncio.sleep(JITTER.uniform(0, SCALED["lease_seconds"] / 3))
    killed_at = time.time()
    victim.kill()

    async def offline() -> float | None:
        return None if await node_state(hive, name) else time.time()

    offline_at = await until(offline, 30, f"{name} to go offline")
    try:
        done = await hive.wait(task_id, timeout=30)
    except Exception:
        starts = await hive.broker.redis.get(f"{hive.config.key_prefix}:test:starts:{task_id}")
        raise RuntimeError(f"task {task_id} not re-run after kill -9: {await hive.status(task_id)}; "
                           f"starts={starts}") from None
    if done.status != TaskStatus.COMPLETED or done.assigned_node != "rescuer":
        raise RuntimeError(f"task {task_id} ended {done.status} on {done.assigned_node}: {done.error}")
    assert done.completed_at is not None
    return {
        "mode": mode,
        "offline_s": round(offline_at - killed_at, 3),
        "completed_s": round(done.completed_at.timestamp() - killed_at, 3),
        "rerun_by": "watchdog" if ".z" in done.engine_job_id else "ARQ lease",
        "attempt": done.attempt,
    }


def summarize_recovery(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mode in ("nexus", "lease-only"):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        completed = [r["completed_s"] for r in mine]
        offline = [r["offline_s"] for r in mine]
        out.append({"mode": mode, "rounds": len(mine),
                    "offline_p50_s": pct(offline, 50), "offline_max_s": max(offline),
                    "completed_p50_s": pct(completed, 50), "completed_min_s": min(completed),
                    "completed_max_s": max(completed),
                    "rerun_by": sorted({r["rerun_by"] for r in mine})})
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    server = None if args.redis_url else support.PrivateRedis()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    ns = Namespace(stamp)
    config = ns.hive_config(url, concurrency=1).evolve(**SCALED)
    log_dir = Path(tempfile.mkdtemp(prefix="hive-bench-foreman-"))
    log(f"Redis: {support.mask(url)} ({'private' if server else 'given'}); logs in {log_dir}")
    try:
        nodes = synthetic_nodes(N_NODES)
        select = bench_select(config, nodes, args.calls)
        refresh = await bench_refresh(config, nodes)
        log(f"refresh of {N_NODES} nodes: p50 {refresh['p50_ms']} ms")
        recovery = await bench_recovery(config, args.rounds, log_dir) if args.rounds else []
    finally:
        admin = AsyncRedis.from_url(url)
        try:
            await support.delete_run_keys(admin, ns, [])
        finally:
            await admin.aclose()
        if server is not None:
            server.stop()
    return {
        "stamp": stamp, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "redis": "private redis-server" if server else "given URL",
        "settings": SCALED | {"node_ttl_s": max(SCALED["heartbeat_interval"] * 3, 1.0)},
        "select_best_node": select, "refresh": refresh,
        "recovery_rounds": recovery, "recovery": summarize_recovery(recovery),
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"## select_best_node over {N_NODES} nodes (snapshot, no I/O)", "",
             "| strategy | requirements | p50 µs | p99 µs |", "|---|---|---:|---:|"]
    lines += [f"| {r['strategy']} | {r['requirements']} | {r['p50_us']} | {r['p99_us']} |"
              for r in report["select_best_node"]]
    ref = report["refresh"]
    lines += ["", f"ForemanAgent.refresh() reading {ref['nodes']} heartbeats: p50 {ref['p50_ms']} ms, "
                  f"p99 {ref['p99_ms']} ms", ""]
    s = report["settings"]
    lines += [f"## kill -9 -> task re-run and completed (heartbeat {s['heartbeat_interval']} s, node TTL "
              f"{s['node_ttl_s']} s, watchdog {s['watchdog_interval']} s, lease {s['lease_seconds']} s)", "",
              "| mode | rounds | offline p50 / max s | completed min / p50 / max s | re-run by |",
              "|---|---:|---|---|---|"]
    lines += [f"| {r['mode']} | {r['rounds']} | {r['offline_p50_s']} / {r['offline_max_s']} | "
              f"{r['completed_min_s']} / {r['completed_p50_s']} / {r['completed_max_s']} | "
              f"{', '.join(r['rerun_by'])} |" for r in report["recovery"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="use this Redis (namespaced keys, deleted after) instead of a private one")
    parser.add_argument("--rounds", type=int, default=5, help="kill -9 rounds per mode (0: skip)")
    parser.add_argument("--calls", type=int, default=2000, help="select_best_node calls per strategy and case")
    args = parser.parse_args()
    report = asyncio.run(amain(args))
    print(table(report))
    save_result(f"foreman-{report['stamp']}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
