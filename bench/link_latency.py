#!/usr/bin/env python3
"""A spore behind a 50 ms link against one beside Redis: task round trip p50 and the drain of tiny tasks.

Builds a test host with ``hive_framework.testing.netns`` (root and iproute2 needed), starts Redis in it,
and runs one 50-slot spore first on the host's own address, then through a ``FaultProxy`` adding 25 ms each
way. Prints both figures and their ratio; asserts nothing (speeds are measured here, never in tests).

    sudo python bench/link_latency.py [--broker streams|arq] [--tasks 1000] [--prefetch N]

``--prefetch N`` starts both spores with ``--prefetch N`` (``HIVE_PREFETCH``): while tasks are quick they begin
up to N tasks beyond their 50 slots, so a batch is not bounded by the slots.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hive_framework import Hive, Kernel, TaskSpec  # noqa: E402
from hive_framework.testing import async_wait_until, child_env, fast_config, hive_argv  # noqa: E402
from hive_framework.testing.faultproxy import FaultProxy  # noqa: E402
from hive_framework.testing.netns import TestNet, netns_problem, stop_process  # noqa: E402

BASIC = "tests.apps.basic"  # `add`: a tiny async task that touches nothing, so the link is all there is to time
TINY = ("add", {"a": 1, "b": 2})


async def round_trips_and_drain(hive: Hive, tasks: int) -> tuple[float, float]:
    """p50 of one task's submit-to-result round trip (20 one at a time), then the drain rate of ``tasks``."""
    trips = []
    for _ in range(20):
        started = time.perf_counter()
        await hive.run(*TINY, timeout=60)
        trips.append(time.perf_counter() - started)
    ids = await hive.submit_many([TaskSpec(task_type=TINY[0], payload=TINY[1]) for _ in range(tasks)])
    started = time.perf_counter()
    for task_id in ids:
        await hive.wait(task_id, timeout=600)
    return statistics.median(trips), tasks / (time.perf_counter() - started)


async def measure(broker: str, tasks: int, prefetch: int = 0) -> dict[str, tuple[float, float]]:
    figures = {}
    with TestNet(["redis"]) as net, tempfile.TemporaryDirectory() as logs:
        redis_url = net["redis"].start_redis()
        proxy = FaultProxy((net["redis"].address, 6379), listen=(net.gateway, 0), delay_up=0.025,
                           delay_down=0.025)
        host, port = proxy.start()
        try:
            for label, url in (("beside Redis", redis_url), ("50 ms link", f"redis://{host}:{port}/0")):
                config = fast_config(redis_url, broker=broker)
                env = child_env(config, {"HIVE_APP": "", "PYTHONPATH": str(ROOT), "REDIS_URL": url})
                name = f"bench-{label[:2]}"
                argv = hive_argv("spore", "--name", name, "--app", BASIC, "--concurrency", "50",
                                 "--prefetch", str(prefetch))
                proc = net["redis"].popen(argv, env=env, log=Path(logs) / f"{name}.log", cwd=ROOT)
                hive = Hive(Kernel(config))
                await hive.open()
                try:
                    async def online(name: str = name, hive: Hive = hive) -> bool:
                        return name in {n.node_name for n in await hive.nodes()}

                    await async_wait_until(online, timeout=60, what=f"spore {name}")
                    await hive.run(*TINY, timeout=60, allow_unknown=True)  # warm up
                    print(f"measuring {label} ...", file=sys.stderr)
                    figures[label] = await round_trips_and_drain(hive, tasks)
                finally:
                    await hive.close()
                    stop_process(proc)
        finally:
            proxy.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="streams", choices=["streams", "arq"])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=0, help="tasks begun beyond the slots (HIVE_PREFETCH)")
    args = parser.parse_args()
    problem = netns_problem()
    if problem:
        sys.exit(f"cannot make test hosts here: {problem}")
    figures = asyncio.run(measure(args.broker, args.tasks, args.prefetch))
    (rt_local, drain_local), (rt_far, drain_far) = figures["beside Redis"], figures["50 ms link"]
    print(f"hive-{args.broker}: round trip p50 beside Redis {rt_local * 1000:.1f} ms, behind a 50 ms link "
          f"{rt_far * 1000:.1f} ms (goal <= 2 link round trips + 10 ms = 110 ms)")
    slots = "50 slots" + (f", prefetch {args.prefetch}" if args.prefetch else "")
    print(f"hive-{args.broker}: drain of {args.tasks:,} tiny tasks by {slots}: beside Redis {drain_local:.0f}/s, "
          f"behind the link {drain_far:.0f}/s = {drain_far / drain_local:.0%} of it (goal >= 25 %)")


if __name__ == "__main__":
    main()
