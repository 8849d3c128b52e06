"""What the spore's per-task log lines cost: CPU per task with ``HIVE_LOG_TASKS`` off and on.

Runs ``Spore._execute`` around a no-op in-process (no Redis round trip), logging to a file the way a spore
under a process manager does, and prints microseconds of CPU per task. ``python bench/task_log_cost.py``
(about 10 s). Decides the default: the lines are off unless asked for (README, ``hive spore --log-tasks``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hive_framework import HiveConfig, Kernel
from hive_framework.models import TaskMessage
from hive_framework.spore import Spore

TASKS = 50_000


async def _noop(message: TaskMessage) -> Any:
    return None


async def measure(log_tasks: bool) -> float:
    config = HiveConfig.load(environ={}, env_file="/dev/null", toml_file=None, log_tasks=log_tasks)
    spore = Spore(Kernel(config, load_entry_points=False), name="bench")
    spore._run_task = _noop  # type: ignore[method-assign]
    message = TaskMessage(task_id="0" * 32, task_type="noop", payload={})
    started = time.process_time()
    for _ in range(TASKS):
        await spore._execute(message)
    return (time.process_time() - started) / TASKS * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            handlers=[logging.FileHandler(Path(folder) / "spore.log")])
        for log_tasks in (False, True, False, True):
            cost = asyncio.run(measure(log_tasks))
            print(f"HIVE_LOG_TASKS={'true ' if log_tasks else 'false'}: {cost:6.1f} us of CPU per task")


if __name__ == "__main__":
    main()
