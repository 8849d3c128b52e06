"""Plumbing shared by the benchmark scripts: a private Redis, worker processes, names and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import redis
from redis.asyncio import Redis as AsyncRedis

from hive_framework import HiveConfig

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
#: ARQ's per-job keys; hive's jobs are ARQ jobs too, keyed by the task id.
ARQ_JOB_KEY_PREFIXES = ("arq:job:", "arq:result:", "arq:retry:", "arq:in-progress:")


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def log(message: str) -> None:
    """Progress goes to stderr; stdout is kept for the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


#: Where benchmarks write their figures (committed: each file names the commit it measured).
RESULTS = Path(__file__).resolve().parent / "results"


def short_commit() -> str:
    """The tree's short commit, ``-dirty`` when it has changes (for the results file name)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=RESULTS.parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "nogit"


def save_result(name: str, data: Any) -> Path:
    """Write ``data`` as ``bench/results/<name>-<commit>.json`` and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{short_commit()}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"wrote {path}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port in a temp dir, without persistence; stopped by its pid."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH: install it (apt-get install redis-server) "
                             "or pass --redis-url")
        self.dir = Path(tempfile.mkdtemp(prefix="hive-bench-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *extra_args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        log_file = self.dir / "redis.log"
                        raise SystemExit(f"private redis-server did not start (see {log_file})") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def on_private_redis(measure: Callable[[str, Path], Awaitable[T]], label: str) -> T:
    """Run ``measure(redis_url, scratch_folder)`` against a throw-away ``redis-server``, stopped after."""
    server = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory(prefix=f"hive-bench-{label}-") as folder:
            return asyncio.run(measure(server.url, Path(folder)))
    finally:
        server.stop()


def mask(url: str) -> str:
    """The URL without any password."""
    from hive_framework.config import mask_url

    return mask_url(url)


class Namespace:
    """Every key and queue name of one run, under ``bench:<stamp>:<random>``: a shared Redis stays safe."""

    def __init__(self, stamp: str) -> None:
        self.root = f"bench:{stamp}:{uuid.uuid4().hex[:6]}"
        self.counter = f"{self.root}:counter"
        #: the prefix of hive's keys with the default broker (``hive_config(..., broker=None)``)
        self.hive_prefix = f"{self.root}:hive"

    def arq_queue(self, variant: str) -> str:
        return f"{self.root}:arq-{variant}:queue"

    def prefix_for(self, broker: str | None) -> str:
        """Each broker named explicitly gets its own keys: the same queue name is a stream for one and a
        sorted set for the other."""
        return self.hive_prefix if broker is None else f"{self.root}:hive-{broker}"

    def hive_config(self, redis_url: str, concurrency: int, broker: str | None = None) -> HiveConfig:
        """hive's defaults (no environment, no files), except the namespace, the slots per spore and, when
        given, the broker (``None``: hive's default broker)."""
        prefix = self.prefix_for(broker)
        settings: dict[str, Any] = {} if broker is None else {"broker": broker}
        return HiveConfig.load(
            environ={},
            env_file=os.devnull,
            toml_file=None,
            redis_url=redis_url,
            key_prefix=prefix,
            high_priority_queue=f"{prefix}:q:high",
            background_queue=f"{prefix}:q:background",
            broadcast_channel=f"{prefix}:broadcast",
            concurrency=concurrency,
            **settings,
        )


async def delete_run_keys(client: AsyncRedis, ns: Namespace, job_ids: Iterable[str]) -> int:
    """Delete the run's namespace and ARQ's per-job keys of ``job_ids`` (never FLUSHDB); returns the count."""
    deleted = 0
    ids = set(job_ids)
    # hive task ids double as their ARQ job ids (arq broker); the status indexes of every hive prefix of the
    # run (one per broker) list every task of the run
    async for key in client.scan_iter(match=f"{ns.root}:hive*:status:*", count=1000):
        ids.update(m.decode() for m in await client.zrange(key, 0, -1))
    keys = [key async for key in client.scan_iter(match=f"{ns.root}:*", count=1000)]
    keys += [prefix + job_id for job_id in ids for prefix in ARQ_JOB_KEY_PREFIXES]
    for start in range(0, len(keys), 1000):
        deleted += await client.delete(*keys[start : start + 1000])
    return deleted


class Workers:
    """Worker processes (spores or ``arq`` workers), each stopped by its own pid."""

    def __init__(self, label: str, argvs: list[list[str]], env: dict[str, str], log_dir: Path) -> None:
        self.label = label
        self.log_path = log_dir / f"{label}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.t_spawn = time.perf_counter()
        self.procs = [
            subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                             stderr=subprocess.STDOUT, start_new_session=True)
            for argv in argvs
        ]

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.label}: worker pid {proc.pid} exited early "
                                   f"(rc={proc.returncode}); see {self.log_path}:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU the worker processes have used so far."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 20.0) -> dict[str, Any]:
        t0 = time.perf_counter()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        killed = False
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, grace_s - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                killed = True
                proc.kill()
                proc.wait()
        self._log.close()
        return {"stop_s": round(time.perf_counter() - t0, 3), "sigkilled": killed,
                "exit_codes": [p.returncode for p in self.procs]}


def base_env() -> dict[str, str]:
    """The runner's environment without hive/Redis settings, with the repo root importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spore_argvs(procs: int, concurrency: int, tag: str) -> list[list[str]]:
    return [
        [sys.executable, "-m", "hive_framework", "spore", "--name", f"bench-{tag}-{i + 1}",
         "--concurrency", str(concurrency), "--app", "bench.jobs"]
        for i in range(procs)
    ]


def spore_env(config: HiveConfig, counter_key: str) -> dict[str, str]:
    env = base_env()
    env.update(config.to_env())
    env["BENCH_COUNTER_KEY"] = counter_key
    return env


def arq_argvs(procs: int) -> list[list[str]]:
    return [[sys.executable, "-m", "arq", "bench.jobs.ArqWorkerSettings"] for _ in range(procs)]


def arq_env(redis_url: str, queue: str, concurrency: int, poll_delay: float | None,
            counter_key: str) -> dict[str, str]:
    env = base_env()
    env.update(BENCH_REDIS_URL=redis_url, BENCH_ARQ_QUEUE=queue, BENCH_CONCURRENCY=str(concurrency),
               BENCH_COUNTER_KEY=counter_key)
    if poll_delay is not None:
        env["BENCH_ARQ_POLL"] = str(poll_delay)
    return env
