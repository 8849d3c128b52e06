"""Helpers shared by tests/test_foreman*.py: fake heartbeats and zombie tasks written through the broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from hive_framework import HiveConfig, TaskStatus, wire
from hive_framework.engines.arq import ArqEngine, ArqKeys
from hive_framework.hive import Hive
from hive_framework.models import NodeInfo, utcnow
from hive_framework.testing import delete_namespace, fast_config


async def beat(hive: Hive, node_id: str, *, online: bool = True, **capabilities: Any) -> None:
    """A heartbeat as a spore writes it (``online``), or only the last-known record of a crashed spore; the
    node serves every task type the test's kernel knows."""
    data = wire.dumps(NodeInfo(node_id=node_id, node_name=node_id, host="h", pid=1, concurrency=4,
                               capabilities=capabilities, task_types=sorted(hive.kernel.task_types)))
    redis = hive.broker.redis
    if online:
        await redis.psetex(hive.broker.keys.node(node_id), 60_000, data)
        await redis.sadd(hive.broker.keys.nodes, node_id)
    else:
        await redis.delete(hive.broker.keys.node(node_id))
    await redis.hset(hive.broker.keys.node_infos, mapping={node_id: data})


async def stop_cleanly(hive: Hive, node_id: str) -> None:
    """What a spore's clean stop leaves behind: nothing of it but its own queue."""
    redis = hive.broker.redis
    await redis.delete(hive.broker.keys.node(node_id))
    await redis.srem(hive.broker.keys.nodes, node_id)
    await redis.hdel(hive.broker.keys.node_infos, node_id)


async def make_zombies(hive: Hive, count: int, node: str = "ghost") -> list[str]:
    """Tasks recorded as running (attempt 1) on ``node``, which never beats, their ARQ jobs still leased.

    Written through the broker the way a spore records a start: nothing but a watchdog can re-run them. They
    are queued on ``node``'s own queue first, so no live spore can take one before it is marked running.
    """
    ids = [await hive.submit("nap", {"seconds": 0.01}, node=node) for _ in range(count)]
    for task_id in ids:
        message = await hive.status(task_id)
        assert message is not None
        await hive.broker.redis.psetex(arq_keys(hive).in_progress(message.engine_job_id), 60_000, b"1")
        message.status = TaskStatus.RUNNING
        message.attempt = 1
        message.assigned_node = node
        message.started_at = utcnow()
        await hive.broker.save_task(message)
    return ids


async def drop_jobs(hive: Hive, ids: list[str]) -> None:
    """Delete the ARQ keys these tasks left (they live outside the test's key prefix)."""
    for message in await hive.broker.get_tasks(ids):
        if message is not None:
            job = message.engine_job_id
            await hive.broker.redis.delete(arq_keys(hive).in_progress(job), arq_keys(hive).job(job))


#: These tests write ARQ's job keys (leases) by hand: they run on the ARQ broker, whatever HIVE_TEST_BROKER says.
def arq_keys(hive: Hive) -> ArqKeys:
    """Where the arq engine of ``hive`` keeps ARQ's job keys (under the hive's prefix)."""
    engine = hive.broker.engine
    assert isinstance(engine, ArqEngine), "this test writes the arq engine's keys by hand"
    return engine.arq_keys


ARQ_BROKER: dict[str, Any] = {"broker": "arq"} if "broker" in attrs.fields_dict(HiveConfig) else {}


def isolated_config(redis_url: str, *, arq: bool = False, **overrides: Any) -> HiveConfig:
    """fast_config, with no entry-point plugin loaded (HIVE_LOAD_PLUGINS=""): whatever else is installed on
    the machine, these tests' spores, nexus and clients run the built-ins and tests.apps.basic only.
    ``arq=True``: on the ARQ broker, for tests that write its job keys by hand."""
    return fast_config(redis_url, load_plugins=(), **{**(ARQ_BROKER if arq else {}), **overrides})


def isolated_namespace(redis_url: str, *, arq: bool = False, **overrides: Any) -> Iterator[HiveConfig]:
    """Body of the test modules' ``hive_config`` fixture: :func:`isolated_config`, namespace deleted after."""
    config = isolated_config(redis_url, arq=arq, **overrides)
    yield config
    delete_namespace(redis_url, config)
