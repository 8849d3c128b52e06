"""hive-framework in the peers harness (``../shared/bench-peers``): hive's public API only.

This file is ours; the harness is not copied into the repository. To run it, copy the harness and link
this adapter into its ``adapters/`` folder::

    cp -r ../shared/bench-peers /tmp/ && chmod -R u+w /tmp/bench-peers
    ln -sf "$PWD/bench/peers/hive_adapter.py" /tmp/bench-peers/adapters/hive_adapter.py
    PEERS_PY_hive_adapter="$(command -v python3.11)" PEERS_REPS=3 \\
        bash /tmp/bench-peers/run_all.sh hive_adapter hive_adapter:arq dramatiq_adapter arq_adapter ...

``PEERS_PY_hive_adapter`` is any Python where hive-framework is installed (the harness itself needs only
``redis`` there). ``PEERS_VARIANT`` (the ``:arq`` above) picks the broker: empty or ``streams`` for the
default Redis Streams broker, ``arq`` for the ARQ-backed one.

* enqueue: ``Hive.submit`` (A), ``Hive.run`` = submit + ``Hive.result`` (C: a BLPOP on the task's done
  list, no polling), ``Hive.map`` (D: one pipelined batch, results read from the job's event stream);
* workers: ``python -m hive_framework spore --name ... --concurrency 50 --app adapters.hive_adapter``,
  configured by environment (``REDIS_URL``, ``HIVE_BROKER``) as a deployment would be;
* everything else is hive's default (JSON, retries, timeouts, leases, heartbeats, status indexes).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from adapters.base import CONCURRENCY, COUNTER_KEY, PROCS, REDIS_URL, SLEEP_S, Adapter

from hive_framework import Hive, TaskContext, task

VARIANT = os.environ.get("PEERS_VARIANT", "")
BROKER = VARIANT or "streams"
if BROKER not in ("streams", "arq"):
    raise SystemExit(f"hive_adapter: PEERS_VARIANT must be empty, 'streams' or 'arq', not {VARIANT!r}")


@task("peers.noop")
async def noop(payload: dict[str, Any], context: TaskContext) -> None:
    await context.redis.incr(COUNTER_KEY)


@task("peers.echo")
async def echo(payload: dict[str, Any], context: TaskContext) -> Any:
    await context.redis.incr(COUNTER_KEY)
    return payload["x"]


@task("peers.sleepy")
async def sleepy(payload: dict[str, Any], context: TaskContext) -> Any:
    await asyncio.sleep(SLEEP_S)
    await context.redis.incr(COUNTER_KEY)
    return payload["item"]


class HiveAdapter(Adapter):
    name = f"hive-{BROKER}"
    dist = "hive-framework"
    is_async = True

    def worker_commands(self) -> list[list[str]]:
        # The spores are configured the way a deployment configures them: by environment.
        env = ["env", f"REDIS_URL={REDIS_URL}", f"HIVE_BROKER={BROKER}"]
        return [
            [*env, sys.executable, "-m", "hive_framework", "spore", "--name", f"peers-spore-{i + 1}",
             "--concurrency", str(CONCURRENCY), "--app", "adapters.hive_adapter"]
            for i in range(PROCS)
        ]

    def total_concurrency(self) -> int:
        return PROCS * CONCURRENCY

    def notes(self) -> dict[str, Any]:
        return {
            "worker": f"{PROCS} x `python -m hive_framework spore --concurrency {CONCURRENCY}` "
                      "(default concurrency 10)",
            "broker": f"HIVE_BROKER={BROKER}" + (" (default)" if BROKER == "streams" else " (not default)"),
            "results": "task record as JSON, kept HIVE_RESULT_TTL (default); Hive.result = BLPOP on the "
                       "task's done list",
            "fanout": "Hive.map('peers.sleepy', xs): one pipelined enqueue, results from the job's event stream",
            "client": "Hive.connect(url, apps=[this module]); everything else hive's defaults",
        }

    async def setup(self) -> None:
        self.hive = await Hive.connect(REDIS_URL, apps=[sys.modules[__name__]], broker=BROKER).open()

    async def teardown(self) -> None:
        await self.hive.close()

    async def enqueue_noop(self, i: int) -> None:
        await self.hive.submit("peers.noop", {"i": i})

    async def roundtrip(self, x: int) -> Any:
        return await self.hive.run("peers.echo", {"x": x}, timeout=60)

    async def fanout(self, xs: Sequence[int]) -> list[Any]:
        return await self.hive.map("peers.sleepy", list(xs), timeout=90)


ADAPTER = HiveAdapter()
