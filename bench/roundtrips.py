#!/usr/bin/env python3
"""Count hive's Redis round trips per task, by stage, with ``MONITOR`` on a private redis-server.

    python bench/roundtrips.py [--n 500] [--json]

Phases, separated by ``ECHO`` markers in the MONITOR stream:

enqueue    the client ``submit``s N no-op tasks one by one, no spore running;
execute    2 spores (``python -m hive_framework spore --app bench.jobs``, 50 slots each) drain them;
idle       1 s with nothing to do (the spores' background traffic);
roundtrip  ``Hive.run`` 50 times, one at a time (client: enqueue + wait; spores: run);
fanout     ``submit_many`` 200 tasks, then wait for all with ``Hive.result`` (what ``Hive.map`` does);
arq-*      the same enqueue and execute phases with raw ARQ (2 ``arq`` workers, max_jobs 50), as a baseline.

A round trip is one command, or one MULTI...EXEC block (redis-py sends a transaction in one write).
Each MONITOR line names the client's address; TCP ports are mapped to processes with psutil, so
the client's and the spores' traffic are counted apart. Only a private server is used: MONITOR on
a shared one would see other clients' commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from arq.connections import RedisSettings, create_pool  # noqa: E402
from redis.asyncio import Redis as AsyncRedis  # noqa: E402

from bench import support  # noqa: E402
from bench.support import Namespace, Workers, log  # noqa: E402
from hive_framework import TaskSpec  # noqa: E402
from hive_framework.hive import Hive  # noqa: E402
from hive_framework.kernel import Kernel  # noqa: E402

LINE_RE = re.compile(r'^(?P<ts>[\d.]+) \[\d+ (?P<addr>[^\]]+)\] (?P<args>.*)$')
ARG_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
HEX_RE = re.compile(r"[0-9a-f]{32}")

#: (regex over a round trip's signature, stage label), first match wins
LABELS = [
    (r"^ZRANGEBYSCORE", "poll a queue"),
    (r"^WATCH arq:in-progress", "claim 1/4: WATCH in-progress"),
    (r"^EXISTS arq:in-progress", "claim 2/4: EXISTS in-progress"),
    (r"^ZSCORE", "claim 3/4: ZSCORE queue"),
    (r"^MULTI PSETEX arq:in-progress", "claim 4/4: MULTI PSETEX in-progress"),
    (r"^UNWATCH", "claim lost (already in progress): UNWATCH"),
    (r"^MULTI$", "claim lost at EXEC (WATCH fired)"),
    (r"^MULTI GET arq:job", "ARQ run_job: GET job, INCR+EXPIRE retry"),
    (r"^GET \{p\}:task", "GET task record"),
    (r"^MULTI SET \{p\}:task.*ZADD \{q\}", "enqueue: SET task, status index moves, PSETEX job, ZADD queue"),
    (r"^MULTI SET \{p\}:task.*status:running", "save RUNNING: SET task, status index moves"),
    (r"^INCR(BY)? \{counter\}", "task body: INCR counter"),
    (r"^MULTI PSETEX \{p\}:task", "save COMPLETED: PSETEX task, RPUSH+PEXPIRE done, status index moves"),
    (r"^SMEMBERS \{p\}:dependents", "release dependents: SMEMBERS"),
    (r"^MULTI DEL arq:in-progress", "finish_job: DEL in-progress/retry/job, ZREM queue"),
    (r"^BLPOP \{p\}:done", "wait: BLPOP done list"),
    (r"^RPUSH \{p\}:done", "wait: RPUSH marker back"),
    (r"^SMEMBERS \{p\}:nodes", "enqueue: SMEMBERS nodes (remote task types)"),
    (r"^MGET \{p\}:node", "MGET node records"),
    (r"^MULTI PSETEX \{p\}:node", "heartbeat"),
    (r"^(SUBSCRIBE|PING|CLIENT|HELLO|INFO)", "connection / start-up"),
    (r"^WATCH arq:job", "ARQ enqueue 1/3: WATCH job"),
    (r"^EXISTS arq:job", "ARQ enqueue 2/3: EXISTS job, result"),
    (r"^MULTI PSETEX arq:job", "ARQ enqueue 3/3: MULTI PSETEX job, ZADD queue"),
    (r"^MULTI SET arq:result", "ARQ finish_job: SET result, ZREM abort+queue, DEL"),
    (r"health-check", "ARQ health check"),
]


def parse_monitor(path: Path) -> list[tuple[float, int, list[str]]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        args = [a.encode().decode("unicode_escape", errors="replace") for a in ARG_RE.findall(m["args"])]
        if args:
            rows.append((float(m["ts"]), int(m["addr"].rsplit(":", 1)[1]), args))
    return rows


class Normaliser:
    def __init__(self, ns: Namespace, queues: list[str]) -> None:
        self.ns = ns
        self.queues = queues

    def key(self, key: str) -> str:
        if key in self.queues:
            return "{q}"
        if key == self.ns.counter:
            return "{counter}"
        key = key.replace(self.ns.hive_prefix, "{p}")
        key = HEX_RE.sub("{id}", key)
        key = re.sub(r"(node:)bench-[\w.-]+", r"\1{node}", key)
        return key

    def command(self, args: list[str]) -> str:
        name = args[0].upper()
        if name in {"MULTI", "EXEC", "UNWATCH", "PING"} or len(args) == 1:
            return name
        key = self.key(args[1])
        if name == "ZREM" and ":status:" in key:
            key = key.rsplit(":", 1)[0] + ":*"
        return f"{name} {key}"


def signature(commands: list[str]) -> str:
    """Consecutive repeats collapsed: ``ZREM {p}:status:* x6``."""
    out: list[str] = []
    for command in commands:
        if command == "EXEC":
            continue
        if out and out[-1].split(" x")[0] == command:
            head, _, count = out[-1].partition(" x")
            out[-1] = f"{head} x{int(count or 1) + 1}"
        else:
            out.append(command)
    return " ".join(out)


def label(sig: str) -> str:
    return next((name for pattern, name in LABELS if re.search(pattern, sig)), "")


def round_trips(rows: list[tuple[float, int, list[str]]], norm: Normaliser) -> dict[int, list[tuple[str, int]]]:
    """Per client port: (signature, commands) of each round trip, in order."""
    per_port: dict[int, list[tuple[str, int]]] = defaultdict(list)
    open_multi: dict[int, list[str]] = {}
    for _ts, port, args in rows:
        command = norm.command(args)
        if port in open_multi:
            open_multi[port].append(command)
            if command == "EXEC":
                block = open_multi.pop(port)
                per_port[port].append((signature(block), len(block) - 2))
        elif command == "MULTI":
            open_multi[port] = [command]
        else:
            per_port[port].append((signature([command]), 1))
    return per_port


def ports_of(pid: int, redis_port: int) -> set[int]:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return {c.laddr.port for c in conns if c.raddr and c.raddr.port == redis_port}


def start_monitor(cli: str, redis_port: int, path: Path) -> subprocess.Popen[bytes]:
    with open(path, "wb") as out:
        return subprocess.Popen([cli, "-p", str(redis_port), "monitor"], stdout=out,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


async def run(n: int) -> dict[str, Any]:
    server = support.PrivateRedis()
    redis_port = server.port
    ns = Namespace(time.strftime("%Y%m%dT%H%M%S"))
    config = ns.hive_config(server.url, 50)
    tmp = Path(tempfile.mkdtemp(prefix="hive-bench-rt-"))
    monitor_path = tmp / "monitor.txt"
    cli = shutil.which("redis-cli")
    if cli is None:
        server.stop()
        raise SystemExit("redis-cli is not on PATH (apt-get install redis-tools)")
    monitor = start_monitor(cli, redis_port, monitor_path)
    admin = AsyncRedis.from_url(server.url)
    hive = await Hive(Kernel(config, apps=["bench.jobs"])).open()
    spores: Workers | None = None
    counts = {"enqueue": n, "execute": n, "idle": 1, "roundtrip": 50, "fanout": 200,
              "arq-enqueue": n, "arq-execute": n}
    arq_queue = ns.arq_queue("rt")
    arq_workers: Workers | None = None
    try:
        await asyncio.sleep(0.3)  # MONITOR attached
        admin_port = int((await admin.client_info())["addr"].rsplit(":", 1)[1])

        async def mark(phase: str) -> None:
            await admin.echo(f"bench-phase:{phase}")

        async def wait_counter(target: int) -> None:
            deadline = time.monotonic() + 60
            while int(await admin.get(ns.counter) or 0) < target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the spores did not run {target} tasks in 60 s")
                await asyncio.sleep(0.01)

        await mark("enqueue")
        for i in range(n):
            await hive.submit("bench.noop", {"i": i})
        await mark("execute")
        spores = Workers("rt-spores", support.spore_argvs(2, 50, "rt"), support.spore_env(config, ns.counter), tmp)
        t0 = time.perf_counter()
        await wait_counter(n)
        log(f"execute: {n} tasks in {time.perf_counter() - t0:.2f} s (incl. spore start)")
        await asyncio.sleep(0.3)  # completions after the last INCR
        await mark("idle")
        await asyncio.sleep(1.0)
        await mark("roundtrip")
        for i in range(counts["roundtrip"]):
            await hive.run("bench.echo", {"x": i}, timeout=30)
        await asyncio.sleep(0.2)
        await mark("fanout")
        ids = await hive.submit_many([TaskSpec(task_type="bench.sleepy", payload={"x": x})
                                      for x in range(counts["fanout"])])
        await asyncio.gather(*(hive.result(t, timeout=60) for t in ids))
        await asyncio.sleep(0.2)
        await mark("end")
        worker_ports = set().union(*(ports_of(p.pid, redis_port) for p in spores.procs))
        spores.stop()
        spores = None
        await admin.delete(ns.counter)
        pool = await create_pool(RedisSettings.from_dsn(server.url), default_queue_name=arq_queue)
        await mark("arq-enqueue")
        for i in range(n):
            await pool.enqueue_job("noop", i)
        await mark("arq-execute")
        arq_workers = Workers("rt-arq", support.arq_argvs(2),
                              support.arq_env(server.url, arq_queue, 50, None, ns.counter), tmp)
        await wait_counter(n)
        await asyncio.sleep(0.3)
        await mark("end")
        worker_ports |= set().union(*(ports_of(p.pid, redis_port) for p in arq_workers.procs))
        client_ports = ports_of(psutil.Process().pid, redis_port) - {admin_port}
        await pool.aclose()
    finally:
        for workers in (spores, arq_workers):
            if workers is not None:
                workers.stop()
        await hive.close()
        await admin.aclose()
        await asyncio.sleep(0.3)
        monitor.terminate()
        monitor.wait()
        server.stop()

    rows = parse_monitor(monitor_path)
    shutil.rmtree(tmp, ignore_errors=True)
    norm = Normaliser(ns, [config.high_priority_queue, config.background_queue, arq_queue])
    # split the stream at the markers
    phases: dict[str, list[tuple[float, int, list[str]]]] = defaultdict(list)
    phase = "setup"
    for row in rows:
        if row[2][0].upper() == "ECHO" and row[2][1].startswith("bench-phase:"):
            phase = row[2][1].split(":", 1)[1]
            continue
        phases[phase].append(row)
    report: dict[str, Any] = {"n": counts, "phases": {}}
    for name in counts:
        per_port = round_trips(phases[name], norm)
        sides: dict[str, Counter[str]] = {"client": Counter(), "workers": Counter(), "other": Counter()}
        commands: dict[str, int] = {"client": 0, "workers": 0, "other": 0}
        for port, trips in per_port.items():
            if port == admin_port:
                continue
            side = "client" if port in client_ports else "workers" if port in worker_ports else "other"
            for sig, ncmd in trips:
                sides[side][sig] += 1
                commands[side] += ncmd
        report["phases"][name] = {
            side: {
                "round_trips_per_task": round(sum(c.values()) / counts[name], 2),
                "commands_per_task": round(commands[side] / counts[name], 2),
                "by_signature": [
                    {"per_task": round(k / counts[name], 3), "label": label(sig), "signature": sig}
                    for sig, k in c.most_common()
                ],
            }
            for side, c in sides.items() if c
        }
    return report


def render(report: dict[str, Any]) -> str:
    lines = []
    for name, sides in report["phases"].items():
        unit = "per second" if name == "idle" else "per task"
        lines.append(f"\n### {name} (n={report['n'][name]}; figures {unit})\n")
        lines.append("| side | round trips | commands (excl. MULTI/EXEC) | stage | signature |")
        lines.append("|---|---|---|---|---|")
        for side, data in sides.items():
            lines.append(f"| **{side}** | **{data['round_trips_per_task']}** | **{data['commands_per_task']}** "
                         f"| total | |")
            for entry in data["by_signature"]:
                if entry["per_task"] < 0.01:
                    continue
                sig = entry["signature"]
                sig = sig if len(sig) <= 90 else sig[:87] + "..."
                lines.append(f"| {side} | {entry['per_task']} | | {entry['label']} | `{sig}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="tasks in the enqueue/execute phases")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    args = parser.parse_args()
    report = asyncio.run(run(args.n))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
