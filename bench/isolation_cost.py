#!/usr/bin/env python3
"""What isolation="process" costs per task: a no-op sync handler called in a thread and in a child process.

No Redis: only the hand-off the spore makes per call (``run_in_executor`` against a JSON call over a pipe to a
child). Also the cost of replacing a killed child (a fork from the forkserver). ``python bench/isolation_cost.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hive_framework.isolation import ProcessPool  # noqa: E402
from tests.apps.isolated import spin, whoami  # noqa: E402

CALLS = 3000


def noop(payload: dict[str, object]) -> None:
    return None


async def per_call(label: str, call: object, calls: int = CALLS) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()  # type: ignore[operator]
    micros = (time.perf_counter() - started) / calls * 1e6
    print(f"{label:<44} {micros:8.1f} us per call")
    return micros


async def main() -> None:
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(4)
    pool = ProcessPool(4, preload=["tests.apps.isolated"])
    try:
        await pool.call(whoami.handler, {})  # start the forkserver and one child
        thread = await per_call("thread (run_in_executor), no-op", lambda: loop.run_in_executor(threads, noop, {}))
        process = await per_call("process (JSON over a pipe), small payload", lambda: pool.call(whoami.handler, {}))
        print(f"process / thread: {process / thread:.1f}x, +{process - thread:.0f} us per task")
        replacements = []
        for _ in range(20):
            try:
                async with asyncio.timeout(0.05):
                    await pool.call(spin.handler, {})
            except TimeoutError:
                pass
            started = time.perf_counter()
            await pool.call(whoami.handler, {})
            replacements.append(time.perf_counter() - started)
        print(f"first call after a kill (a fresh child): median {statistics.median(replacements) * 1000:.1f} ms")
    finally:
        pool.close()
        threads.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
