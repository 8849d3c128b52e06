"""Helpers shared by the integration tests (tests/test_integration_*.py): polling with deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from hive_framework import HiveConfig, TaskMessage, TaskStatus
from hive_framework.hive import Hive
from hive_framework.testing import SporeProcess, async_wait_until, child_env, hive_argv

#: The app module with the task types the integration tests run (echo, flaky, gated, nap...).
BASIC = "tests.apps.basic"
REPO_ROOT = Path(__file__).resolve().parent.parent


async def order_list(hive: Hive) -> list[str]:
    """Labels appended by the ``record`` and ``gated`` task types when they started, oldest first."""
    raw = await hive.broker.redis.lrange(f"{hive.config.key_prefix}:test:order", 0, -1)
    return [item.decode() for item in raw]


async def open_gate(hive: Hive, gate: str) -> None:
    """Let every ``gated`` task waiting on ``gate`` finish."""
    await hive.broker.redis.set(f"{hive.config.key_prefix}:test:gate:{gate}", b"1")


async def wait_for_order_length(hive: Hive, length: int, timeout: float = 15.0) -> list[str]:
    async def long_enough() -> list[str] | None:
        found = await order_list(hive)
        return found if len(found) >= length else None

    return await async_wait_until(long_enough, timeout=timeout, what=f"{length} task starts to be recorded")


async def count_outcomes(hive: Hive, task_ids: Iterable[str], ttl_ms: int = 600_000) -> None:
    """Mark the tasks as waited for (as ``wait`` does, for longer), so that every final save of each pushes onto
    its ``done`` list, kept as long as the mark: the list's length then counts the outcomes recorded."""
    async with hive.broker.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.set(hive.broker.keys.waiters(task_id), b"1", px=ttl_ms)
        await pipe.execute()


async def wait_for_nodes(hive: Hive, names: Iterable[str], timeout: float = 20.0) -> None:
    """Until a live heartbeat of every named spore is in Redis (a spore subscribes to broadcasts before it)."""
    wanted = set(names)

    async def online() -> bool:
        return wanted <= {n.node_name for n in await hive.nodes()}

    await async_wait_until(online, timeout=timeout, what=f"spores {sorted(wanted)} to come online")


async def wait_running(hive: Hive, task_id: str, node: str, timeout: float = 20.0) -> TaskMessage:
    """Until ``task_id`` is running on ``node``; returns the stored task."""

    async def running() -> TaskMessage | None:
        message = await hive.status(task_id)
        if message is not None and message.status == TaskStatus.RUNNING and message.assigned_node == node:
            return message
        return None

    return await async_wait_until(running, timeout=timeout, what=f"task {task_id} to run on {node}")


async def wait_nap_started(hive: Hive, task_id: str, node: str, timeout: float = 20.0) -> TaskMessage:
    """Until the ``nap`` task ``task_id`` runs on ``node`` and its handler has counted its start.

    "Running" is saved before the handler is called: a spore killed in between leaves the next run to be the
    first start (the long one, with ``first_only``)."""
    message = await wait_running(hive, task_id, node, timeout)
    starts = f"{hive.config.key_prefix}:test:starts:{task_id}"

    async def started() -> bool:
        return bool(await hive.broker.redis.get(starts))

    await async_wait_until(started, timeout=timeout, what=f"task {task_id}'s handler to start on {node}")
    return message


async def wait_exit(proc: SporeProcess, timeout: float = 20.0) -> int:
    """Until the spore process has exited; returns its exit code."""

    async def exited() -> bool:
        return proc.proc.poll() is not None

    await async_wait_until(exited, timeout=timeout, what=f"spore {proc.name} to exit")
    return int(proc.proc.returncode)


async def assert_stays(predicate: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Check ``predicate`` over and over for ``seconds``; fail at the first check it does not hold.

    The one way to show that something does *not* happen: an observation window, polled, never a blind sleep.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await predicate(), what
        await asyncio.sleep(0.02)
    assert await predicate(), what


def cli_env(config: HiveConfig, apps: tuple[str, ...] = (BASIC,)) -> dict[str, str]:
    """Environment for a ``hive`` subprocess in ``config``'s namespace (nothing inherited from HIVE_*/REDIS_*)."""
    return child_env(config, {"HIVE_APP": ",".join(apps), "PYTHONPATH": str(REPO_ROOT)})


async def hive_cli(config: HiveConfig, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hive_framework ARGS`` as a separate client process (off the event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        hive_argv(*args, log_level="warning"),
        env=cli_env(config),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
