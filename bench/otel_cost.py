#!/usr/bin/env python3
"""What tracing with the otel plugin costs per task: the drain of no-op tasks with it off and on (issue 20).

    python bench/otel_cost.py [--tasks 20000] [--reps 1] [--redis-url URL]

Needs ``plugins/otel`` and ``opentelemetry-sdk`` installed (``pip install -e 'plugins/otel[test]'``). Drains
``--tasks`` no-ops queued beforehand by 2 spore processes of 50 slots, in the order off, span, attribute,
attribute, span, off so that drift cancels: "off" spores run with ``HIVE_DISABLE_PLUGINS=otel``; the others load
the plugin and an SDK ``TracerProvider`` with a batch processor and an exporter that drops the spans
(``bench/otel_sdk.py``), recording the queue wait as a span (the default) or as an attribute of the run span
(``OTEL_PYTHON_HIVE_QUEUE_WAIT=attribute``). The tasks are queued without tracing in all, so the figure is the
spore's side: queue-wait and run spans.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.hooks_cost import CONCURRENCY, PROCS, drain  # noqa: E402
from bench.support import Namespace, PrivateRedis, log  # noqa: E402

#: The spores' set-ups, in the order they drain (then the reverse, so drift cancels).
MODES = ("off", "span", "attribute")
LABELS = {
    "off": "otel plugin off",
    "span": "otel plugin on (queue wait as a span, the default), SDK with a batch processor",
    "attribute": "otel plugin on, queue wait as an attribute of the run span",
}


async def main_async(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("hive_plugin_otel") is None or importlib.util.find_spec("opentelemetry.sdk") is None:
        raise SystemExit("needs plugins/otel and opentelemetry-sdk: pip install -e 'plugins/otel[test]'")
    private = None if args.redis_url else PrivateRedis()
    url = args.redis_url or private.url  # type: ignore[union-attr]
    ns = Namespace(time.strftime("%Y%m%d-%H%M%S"))
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="hive-bench-otel-") as tmp:
            order = [*MODES, *reversed(MODES)] * args.reps
            for index, mode in enumerate(order):
                config = ns.hive_config(url, CONCURRENCY).evolve(key_prefix=f"{ns.root}:r{index}",
                                                                  high_priority_queue=f"{ns.root}:r{index}:q:high",
                                                                  background_queue=f"{ns.root}:r{index}:q:bg",
                                                                  broadcast_channel=f"{ns.root}:r{index}:bc")
                log(f"drain {index + 1}/{len(order)}: {args.tasks} tasks, otel {mode}")
                apps = [] if mode == "off" else ["bench.otel_sdk"]
                env = {"HIVE_DISABLE_PLUGINS": "otel"} if mode == "off" else {"OTEL_PYTHON_HIVE_QUEUE_WAIT": mode}
                runs[mode].append(await drain(url, ns, config, args.tasks, apps, Path(tmp), f"r{index}", env))
    finally:
        if private is not None:
            private.stop()

    def mean(mode: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[mode])

    off = mean("off", "jobs_per_s")
    print(f"| drain of {args.tasks:,} no-ops, {PROCS} spores x {CONCURRENCY} | jobs/s (mean of {len(runs['off'])}) "
          "| spore CPU µs / task | ratio to off |")
    print("|---|---|---|---|")
    for mode in MODES:
        label = LABELS[mode]
        jobs = mean(mode, "jobs_per_s")
        print(f"| {label} | {jobs:,.0f} | {mean(mode, 'cpu_us_per_task'):.0f} | {jobs / off:.3f} |")
    print()
    print("goal: tracing costs < 15 % of the drain (ratio > 0.85)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of the order above")
    parser.add_argument("--redis-url", default="")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
