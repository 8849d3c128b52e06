#!/usr/bin/env python3
"""Drain per primary on a Redis Cluster of 1 and of 3 primaries (issue 15); prints a Markdown table.

    python bench/cluster_drain.py [--tasks 2000] [--hives 3] [--concurrency 20]

For each cluster size a private cluster is made on loopback (``redis-cli --cluster create``, no
persistence, stopped by pid at the end). ``--hives`` hives with prefixes chosen so that, on 3 primaries,
each lands on a different one (a hive lives in one hash slot: README "Redis Cluster") each get ``--tasks``
``add`` tasks queued, then one spore process per hive drains them; the figure is tasks completed per
second from the spores' start to the last completion, in total and per primary that held a hive.
On a 2-core machine the spores, not Redis, are the bottleneck: read the figures as how the load was
split, not as Redis's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis.cluster import key_slot  # noqa: E402

from hive_framework.broker.specs import TaskSpec  # noqa: E402
from hive_framework.config import HiveConfig  # noqa: E402
from hive_framework.connection import redis_client  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402
from hive_framework.supervisor import child_env, spawn_hive  # noqa: E402


def cluster_port() -> int:
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise SystemExit("no free port pair")


def start_cluster(size: int, tmp: Path) -> tuple[str, list[subprocess.Popen[bytes]], list[int]]:
    ports = [cluster_port() for _ in range(size)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return _start(size, tmp, ports, procs)
    except BaseException:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        raise


def _start(size: int, tmp: Path, ports: list[int],
           procs: list[subprocess.Popen[bytes]]) -> tuple[str, list[subprocess.Popen[bytes]], list[int]]:
    for port in ports:
        folder = tmp / f"node-{port}"
        folder.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--dir", str(folder), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    for port in ports:
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(port=port, socket_timeout=1).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    if size == 1:  # redis-cli --cluster create wants 3 primaries: one node takes every slot itself
        redis.Redis(port=ports[0]).execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
    else:
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 60
    while not all(b"cluster_state:ok" in _cluster_info(p) for p in ports):
        if time.monotonic() > deadline:
            raise SystemExit("cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), procs, ports


def _cluster_info(port: int) -> bytes:
    raw = redis.Redis(port=port, socket_timeout=2).execute_command("CLUSTER INFO")
    if isinstance(raw, dict):
        return b"cluster_state:ok" if raw.get("cluster_state") in ("ok", b"ok") else b""
    return bytes(raw)


def prefixes(count: int) -> list[str]:
    """``count`` hash-tag prefixes in different thirds of the slot range (one per primary on 3 primaries)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        name = f"bench{i}"
        third = key_slot(name.encode()) * 3 // 16384
        found.setdefault(third, "{" + name + "}")
        i += 1
    return [found[k] for k in sorted(found)][:count]


async def drain(url: str, hives: int, tasks: int, concurrency: int) -> tuple[float, dict[int, int]]:
    configs = [HiveConfig(redis_url=url, key_prefix=p, high_priority_queue=f"{p}:high",
                          background_queue=f"{p}:background", broadcast_channel=f"{p}:broadcast",
                          apps=("tests.apps.basic",), poll_interval=0.01, result_ttl=3600.0) for p in prefixes(hives)]
    per_primary: dict[int, int] = {}
    for config in configs:
        async with Hive(Kernel(config)) as hive:
            for start in range(0, tasks, 500):
                await hive.submit_many([TaskSpec(task_type="add", payload={"a": i, "b": 1})
                                        for i in range(start, min(tasks, start + 500))])
            port = int(hive.broker.redis.connection_pool.connection_kwargs["port"])
            per_primary[port] = per_primary.get(port, 0) + tasks
    began = time.monotonic()
    spores = [spawn_hive(["spore", "--name", f"drain-{i}", "--concurrency", str(concurrency)],
                         env=child_env(c, {"HIVE_APP": "tests.apps.basic"}, pythonpath=[str(ROOT)]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, c in enumerate(configs)]
    clients = [redis_client(c) for c in configs]
    try:
        while True:
            done = [await c.zcard(f"{cfg.key_prefix}:status:completed")
                    for c, cfg in zip(clients, configs, strict=True)]
            if all(d >= tasks for d in done):
                break
            if time.monotonic() - began > 600:
                raise SystemExit(f"drain did not finish: {done}")
            await asyncio.sleep(0.02)
        return time.monotonic() - began, per_primary
    finally:
        for c in clients:
            await c.aclose()
        for proc in spores:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per hive")
    parser.add_argument("--hives", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        print("needs redis-server and redis-cli", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    rows = []
    for size in (1, 3):
        with tempfile.TemporaryDirectory(prefix="hive-bench-cluster-") as tmp:
            url, procs, _ = start_cluster(size, Path(tmp))
            try:
                seconds, per_primary = asyncio.run(drain(url, args.hives, args.tasks, args.concurrency))
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
        total = args.hives * args.tasks
        split = ", ".join(f"{n}" for n in sorted(per_primary.values(), reverse=True))
        rows.append(f"| {size} | {len(per_primary)} | {split} | {seconds:.2f} | {total / seconds:,.0f} | "
                    f"{total / seconds / len(per_primary):,.0f} |")
    print(f"\n{args.hives} hives x {args.tasks} `add` tasks, one spore process per hive (concurrency "
          f"{args.concurrency}), {os.cpu_count()} CPU(s)\n")
    print("| primaries | primaries holding a hive | tasks per primary | drain s | tasks/s | tasks/s per primary |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
