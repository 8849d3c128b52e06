"""The backlog gauges scalers read from /metrics: per-queue waiting tasks, oldest-task age, per-type backlog."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hive_framework import HiveConfig, Kernel, TaskStatus
from hive_framework.backlog import read_backlog
from hive_framework.monitor import Monitor, create_app

from .integration_helpers import BASIC
from .test_monitor_api import samples

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


@pytest.fixture
async def client(hive: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(Monitor(hive.broker)))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http


async def test_backlog_gauges_per_queue_and_type(hive: Any, client: httpx.AsyncClient) -> None:
    broker = hive.broker
    # Given an empty hive
    empty = samples((await client.get("/metrics")).text)
    assert empty[("hive_waiting_tasks", ())] == 0
    assert not any(name == "hive_queue_waiting_tasks" for name, _ in empty)

    # And then two high-priority adds, three background echoes and one echo that is already running
    started = time.time()
    for _ in range(2):
        await hive.submit("add", {"a": 1, "b": 2})
    for _ in range(3):
        await hive.submit("echo", {"n": 1})
    running = await hive.submit("echo", {"n": 2})
    await broker.update_task_status(running, TaskStatus.RUNNING)
    oldest = await broker.get_task_status((await broker.redis.zrange(
        broker.keys.status_index(TaskStatus.PENDING), 0, 0))[0].decode())

    # When /metrics is read
    found = samples((await client.get("/metrics")).text)
    elapsed = time.time() - started

    # Then the waiting tasks are counted per queue (the stream or list named in the task) and per type
    high, background = broker.engine.queue_for(10, None, "add"), broker.engine.queue_for(0, None, "echo")
    assert found[("hive_queue_waiting_tasks", (("queue", high),))] == 2
    assert found[("hive_queue_waiting_tasks", (("queue", background),))] == 3
    assert found[("hive_task_type_waiting_tasks", (("task_type", "add"),))] == 2
    assert found[("hive_task_type_waiting_tasks", (("task_type", "echo"),))] == 3
    assert found[("hive_waiting_tasks", ())] == 5
    assert found[("hive_backlog_truncated", ())] == 0
    # and the oldest waiting task's age is how long the first submit has waited
    ages = {q: found[("hive_queue_oldest_task_age_seconds", (("queue", q),))] for q in (high, background)}
    assert 0 <= ages[background] <= ages[high] <= elapsed + 0.5
    assert oldest is not None and oldest.queue == high
    assert found[("hive_oldest_waiting_task_age_seconds", ())] == max(ages.values())


async def test_a_pass_reads_at_most_its_limit(hive: Any) -> None:
    for n in range(5):
        await hive.submit("echo", {"n": n})
    backlog = await read_backlog(hive.broker, limit=3)
    assert backlog.total == 5 and backlog.truncated
    assert sum(q.waiting for q in backlog.by_queue.values()) == 3
    assert backlog.by_type == {"echo": 3}


async def test_keda_lag_is_the_streams_backlog(hive: Any) -> None:
    """What deploy/kubernetes/scaledobject.yaml scales on: the lag of group ``hive`` equals the waiting tasks,
    and a task cancelled while queued makes Redis report the lag as unknown (the caveat documented there)."""
    from hive_framework.engines.streams import GROUP, StreamsEngine

    broker = hive.broker
    engine = broker.engine
    if not isinstance(engine, StreamsEngine):
        pytest.skip("the KEDA lag trigger reads the streams engine")
    # "add" is a high_priority type and "echo" a background one: each type's stream at its level
    high, background = engine.type_stream(10, "add"), engine.type_stream(0, "echo")
    for stream in (high, background):  # as a spore's worker does when it starts
        await broker.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [await hive.submit("add", {"a": 1, "b": 2}) for _ in range(2)]
    ids += [await hive.submit("echo", {"n": n}) for n in range(3)]

    async def lag(stream: str) -> Any:
        (group,) = [g for g in await broker.redis.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())]
        return group["lag"]

    backlog = await read_backlog(broker)
    assert await lag(high) == backlog.by_queue[high].waiting == 2
    assert await lag(background) == backlog.by_queue[background].waiting == 3
    assert await broker.cancel_task(ids[-1])
    assert await lag(background) is None  # an undelivered entry was deleted: Redis cannot tell the lag
    assert (await read_backlog(broker)).by_queue[background].waiting == 2
