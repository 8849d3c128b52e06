"""The benchmark's jobs, for both systems, in one module.

* hive spores load it with ``python -m hive_framework spore --app bench.jobs``: the ``@task`` types
  ``bench.noop``, ``bench.echo``, ``bench.sleepy``, ``bench.fail`` and ``bench.clock``;
* ARQ workers load it with ``python -m arq bench.jobs.ArqWorkerSettings``: the functions ``noop``,
  ``echo`` and ``sleepy``.

Every job ``INCR``s the counter key, so the runner can check that each one ran exactly once. The
runner passes the counter key and the ARQ settings through the environment (``BENCH_*``), which is
read at import, in the worker process.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings

from hive_framework import TaskContext, task

COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:counter")
SLEEP_S = 0.01


# --- hive ------------------------------------------------------------------------------------------


@task("bench.noop")
async def hive_noop(payload: dict[str, Any], context: TaskContext) -> None:
    await context.redis.incr(COUNTER_KEY)


@task("bench.echo")
async def hive_echo(payload: dict[str, Any], context: TaskContext) -> Any:
    await context.redis.incr(COUNTER_KEY)
    return payload["x"]


@task("bench.sleepy")
async def hive_sleepy(payload: dict[str, Any], context: TaskContext) -> Any:
    await asyncio.sleep(SLEEP_S)
    await context.redis.incr(COUNTER_KEY)
    return payload["x"]


@task("bench.fail")
async def hive_fail(payload: dict[str, Any], context: TaskContext) -> None:
    """Always fails: submitted with ``max_retries=0`` it becomes a dead letter (bench/soak.py)."""
    await context.redis.incr(COUNTER_KEY)
    raise RuntimeError("bench.fail fails on purpose")


@task("bench.clock")
async def hive_clock(payload: dict[str, Any], context: TaskContext) -> float:
    """Returns the wall clock when its body started: the client subtracts its submit time (same host)."""
    started = time.time()
    await context.redis.incr(COUNTER_KEY)
    return started


# --- ARQ -------------------------------------------------------------------------------------------


async def noop(ctx: dict[str, Any], i: int) -> None:
    await ctx["redis"].incr(COUNTER_KEY)


async def echo(ctx: dict[str, Any], x: int) -> int:
    await ctx["redis"].incr(COUNTER_KEY)
    return x


async def sleepy(ctx: dict[str, Any], x: int) -> int:
    await asyncio.sleep(SLEEP_S)
    await ctx["redis"].incr(COUNTER_KEY)
    return x


class ArqWorkerSettings:
    """What ``arq`` runs: ARQ defaults except the queue name, ``max_jobs`` and (when asked) ``poll_delay``."""

    functions = [noop, echo, sleepy]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue_name = os.environ.get("BENCH_ARQ_QUEUE", "arq:queue")
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "50"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL", "0.5"))  # 0.5 s is ARQ's default
