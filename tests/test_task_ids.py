"""Task ids: any valid Unicode without control characters up to MAX_TASK_ID_LENGTH survives every path (a
failed attempt's retry, the dead-letter set, a retry by hand, cancel, the Monitor); anything else is refused
at enqueue with one line and nothing stored. Runs on the engine ``HIVE_TEST_BROKER`` names."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive_framework import InvalidTask, Kernel, TaskStatus
from hive_framework.broker.specs import MAX_TASK_ID_LENGTH
from hive_framework.hive import Hive
from hive_framework.monitor.collector import Monitor
from hive_framework.spore import Spore
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC

pytestmark = pytest.mark.redis

@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


valid_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_TASK_ID_LENGTH - 40
).filter(lambda s: bool(s.strip()))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(valid_ids, min_size=1, max_size=4, unique=True))
def test_any_valid_id_survives_retry_dead_letters_retry_by_hand_cancel_and_the_monitor(hive_config, ids):
    async def scenario() -> None:
        kernel = Kernel(hive_config, apps=[BASIC])
        hive = await Hive(kernel).open()
        spore = Spore(kernel, name=f"ids-{uuid.uuid4().hex[:6]}", concurrency=4)
        runner = asyncio.create_task(spore.run(install_signals=False))
        try:
            await spore.wait_ready()
            tag = uuid.uuid4().hex[:6]  # examples share the namespace: each id is new
            failing = [f"{i}{tag}" for i in ids]
            parked = [f"{tag}{i}" for i in ids]
            # Given tasks under those ids that fail once, retry (a delayed retry carries the id), then fail for good
            for task_id in failing:
                await hive.submit("always_fail", {}, task_id=task_id, max_retries=1)
            # and tasks under them pinned to a node that never comes (they stay pending)
            for task_id in parked:
                await hive.submit("echo", {}, task_id=task_id, node=f"absent-{tag}")

            async def all_failed() -> bool:
                found = await hive.broker.get_tasks(failing)
                return all(m is not None and m.status == TaskStatus.FAILED for m in found)

            await async_wait_until(all_failed, timeout=60, what="the failing tasks to fail for good")
            # Then each ran twice under its own id and is a dead letter
            for message in await hive.broker.get_tasks(failing):
                assert message is not None and message.attempt == 2, message
            dead = {m.task_id for m in await hive.broker.dead_letters(limit=1000)}
            assert set(failing) <= dead
            # and the Monitor shows each one
            monitor = Monitor(hive.broker)
            for task_id in failing:
                shown = await monitor.task(task_id)
                assert shown is not None and shown["task_id"] == task_id
            # and a retry by hand runs it again under the same id
            assert await hive.retry(failing[0])

            async def ran_again() -> bool:
                message = await hive.status(failing[0])
                return message is not None and message.status == TaskStatus.FAILED and message.attempt == 2 \
                    and message.engine_job_id != failing[0]

            await async_wait_until(ran_again, timeout=60, what="the retried task to fail again")
            # and cancel finds and cancels the pending ones
            for task_id in parked:
                assert await hive.cancel(task_id)
                assert (await hive.status(task_id)).status == TaskStatus.CANCELLED
        finally:
            spore.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 30)
            await hive.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("task_id", "problem"),
    [
        ("a\x1fb", "control character"),
        ("line\nbreak", "control character"),
        ("nul\x00", "control character"),
        ("x" * (MAX_TASK_ID_LENGTH + 1), "at most"),
        ("\ud800", "surrogate"),
        ("   ", "non-empty"),
        ("", "non-empty"),
    ],
)
async def test_an_id_outside_the_rules_is_refused_at_enqueue_with_one_line(hive, task_id, problem):
    with pytest.raises(InvalidTask) as refused:
        await hive.submit("echo", {}, task_id=task_id)
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not [key async for key in hive.broker.redis.scan_iter(match=hive.broker.keys.task("*"))]


async def test_a_payload_nested_past_the_limit_is_refused_with_one_line(hive):
    from hive_framework.broker.specs import MAX_PAYLOAD_DEPTH

    def nested(depth: int) -> dict:
        value: dict = {}
        for _ in range(depth - 1):
            value = {"a": value}
        return value

    await hive.submit("echo", nested(MAX_PAYLOAD_DEPTH))  # at the limit: accepted
    with pytest.raises(InvalidTask) as refused:
        await hive.submit("echo", nested(MAX_PAYLOAD_DEPTH + 1))
    assert f"nested more than {MAX_PAYLOAD_DEPTH} levels" in str(refused.value)
