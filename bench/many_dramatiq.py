"""Dramatiq's side of bench/many_clients.py: its actors (for the ``dramatiq`` CLI) and its client process.

Runs only in a Python where ``dramatiq[redis]`` is installed (``/tmp/peers-venv``, see the peers harness's
README), never in hive's venv. The workers load it as ``dramatiq bench.many_dramatiq``; the runner starts
each client as ``python bench/many_dramatiq.py CLIENT_ID``. The same jobs as hive's: every one ``INCR``s the
counter; ``echo`` keeps its result (Results middleware, RedisBackend), ``noop`` does not (actor default).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:counter")

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)
_r = redis.Redis.from_url(REDIS_URL)  # thread-safe pool shared by a worker's threads


@dramatiq.actor
def noop(i: int) -> None:
    _r.incr(COUNTER_KEY)


@dramatiq.actor(store_results=True)
def echo(x: int) -> int:
    _r.incr(COUNTER_KEY)
    return x


def client(client_id: int) -> None:
    """The protocol of bench/many_clients.py's clients: warm up, say ready, wait for "go" before each part,
    report each part as one JSON document pushed on a list."""
    n_submit = int(os.environ["BENCH_N_SUBMIT"])
    n_rt = int(os.environ["BENCH_N_RT"])
    control = os.environ["BENCH_CONTROL"]
    r = redis.Redis.from_url(REDIS_URL)
    for k in range(2):
        echo.send(-1 - k).get_result(block=True, timeout=120_000)
    r.rpush(f"{control}:ready", client_id)
    r.blpop([f"{control}:go:submit"], timeout=600)
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n_submit):
        a = time.perf_counter()
        noop.send(client_id * n_submit + i)
        lat.append(time.perf_counter() - a)
    r.rpush(f"{control}:done:submit", json.dumps({"id": client_id, "wall_s": time.perf_counter() - t0, "lat": lat}))
    r.blpop([f"{control}:go:rt"], timeout=600)
    rtt: list[float] = []
    wrong = 0
    for i in range(n_rt):
        a = time.perf_counter()
        got: Any = echo.send(i).get_result(block=True, timeout=120_000)
        rtt.append(time.perf_counter() - a)
        wrong += got != i
    r.rpush(f"{control}:done:rt", json.dumps({"id": client_id, "lat": rtt, "wrong": wrong}))
    r.blpop([f"{control}:go:exit"], timeout=600)  # alive until the runner has read its CPU time
    broker.close()


if __name__ == "__main__":
    client(int(sys.argv[1]))
