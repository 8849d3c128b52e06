"""Idempotency keys: one task per key within the window, atomic across clients and processes, released when
the write fails, refused when malformed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import HiveConfig, Kernel, TaskSpec, TaskStatus
from hive_framework.broker.specs import check_key
from hive_framework.errors import InvalidTask, UnknownTaskType
from hive_framework.hive import Hive
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config.evolve(idempotency_window=30.0), apps=[BASIC])


async def queued(hive: Hive) -> int:
    return int((await hive.queue_stats())["tasks_pending"])


@given(st.text(max_size=220))
def test_any_key_is_accepted_or_refused_by_name(key: str) -> None:
    try:
        assert check_key(key) == key
    except InvalidTask as exc:
        assert str(exc).startswith(f"bad idempotency key {key!r}")
        assert not key or len(key) > 200 or any(ch < " " or ch == "\x7f" for ch in key)


async def test_a_key_makes_one_task_and_answers_its_id_after(hive: Hive) -> None:
    first = await hive.submit("echo", {"n": 1}, key="invoice-42")
    again = await hive.submit("echo", {"n": 2}, key="invoice-42")
    other = await hive.submit("echo", {"n": 3}, key="invoice-43")
    assert again == first != other
    assert await queued(hive) == 2
    message = await hive.status(first)
    assert message is not None and message.payload == {"n": 1}


async def test_a_batch_answers_each_place_and_a_key_twice_in_it_is_one_task(hive: Hive) -> None:
    held = await hive.submit("echo", {}, key="k-held")
    ids = await hive.submit_many([
        TaskSpec(task_type="echo", payload={"i": 0}, key="k-held"),
        TaskSpec(task_type="echo", payload={"i": 1}, key="k-new"),
        TaskSpec(task_type="echo", payload={"i": 2}),
        TaskSpec(task_type="echo", payload={"i": 3}, key="k-new"),
    ])
    assert ids[0] == held and ids[3] == ids[1] and len({held, ids[1], ids[2]}) == 3
    assert await queued(hive) == 3


async def test_clients_racing_with_one_key_get_one_task(hive: Hive, hive_kernel: Kernel) -> None:
    clients = [Hive(hive_kernel) for _ in range(8)]
    for client in clients:
        await client.open()
    try:
        ids = await asyncio.gather(*(c.submit("echo", {"c": i}, key="race") for i, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    assert len(set(ids)) == 1
    assert await queued(hive) == 1


async def test_processes_racing_with_hive_submit_key_print_one_id(hive: Hive, hive_config: HiveConfig) -> None:
    # Only this test's settings: another test's --config leaves HIVE_CONFIG behind in this process.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env = {**base, **hive_config.to_env(), "HIVE_APP": BASIC}
    argv = [sys.executable, "-m", "hive_framework", "submit", "echo", "--key", "cli-race"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(5)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, outs
    assert len({out.strip() for out, _ in outs}) == 1
    assert await queued(hive) == 1


async def test_a_refused_submit_takes_no_key_and_a_failed_write_gives_it_back(
    hive: Hive, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnknownTaskType):
        await hive.submit("no-such-type", {}, key="k")
    with pytest.raises(InvalidTask, match="bad idempotency key"):
        await hive.submit("echo", {}, key="bad\nkey")

    async def broken(*args: Any) -> None:
        raise ConnectionError("Redis went away mid-write")

    monkeypatch.setattr(hive.broker, "_write_new", broken)
    with pytest.raises(ConnectionError):
        await hive.submit("echo", {}, key="k")
    monkeypatch.undo()
    assert not await hive.broker.redis.exists(hive.broker.keys.idempotency("k"))
    made = await hive.submit("echo", {}, key="k")
    assert (await hive.status(made)) is not None and await queued(hive) == 1


async def test_after_the_window_the_key_makes_a_new_task_and_the_first_ran_once(
    hive_config: HiveConfig, spore_processes: Any
) -> None:
    hive = Hive(Kernel(hive_config.evolve(idempotency_window=1.0), apps=[BASIC]))
    await hive.open()
    try:
        spore_processes("worker", apps=(BASIC,))
        first = await hive.submit("nap", {"seconds": 0}, key="nightly")
        assert await hive.submit("nap", {"seconds": 0}, key="nightly") == first
        done = await hive.wait(first, timeout=30)
        assert (done.status, done.result["starts"]) == (TaskStatus.COMPLETED, 1)

        async def expired() -> bool:
            return not await hive.broker.redis.exists(hive.broker.keys.idempotency("nightly"))

        await async_wait_until(expired, timeout=10, what="the key's window to pass")
        second = await hive.submit("nap", {"seconds": 0}, key="nightly")
        assert second != first
        assert (await hive.wait(second, timeout=30)).status == TaskStatus.COMPLETED
    finally:
        await hive.close()
