"""One spore per node id: a supervisor killed with kill -9 takes its spore with it, and the restarted supervisor
serves with exactly one process, on the committed release."""

from __future__ import annotations

import asyncio
import contextlib

import psutil
import pytest
from hive_framework.testing import async_wait_until
from ota_helpers import OTAHive, run_on, version_app, wait_online

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_a_killed_supervisor_leaves_no_spore_and_its_restart_runs_exactly_one(ota_hive: OTAHive) -> None:
    # Given a supervised spore on v1
    first = ota_hive.spore("a")
    v1 = ota_hive.package("1.0.0", version_app('"v1"'))
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a"])
        assert (await ota.rollout(v1, ["a"], timeout=60))["ok"]
        child = (await run_on(ota.broker, "a", "ota.probe"))["pid"]
        assert child != first.pid

        # When its supervisor is killed with SIGKILL
        first.kill()

        # Then its spore stops too (the parent-death signal), and deregisters
        async def child_gone() -> bool:
            return not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE

        await async_wait_until(child_gone, timeout=30, what=f"spore pid {child} to exit with its supervisor")

        # And when the supervisor is started again on the same state folder
        ota_hive.spore("a")
        await wait_online(ota.broker, ["a"], timeout=30)

        # Then 20 pinned tasks are all answered by one process, running the committed release
        answers = [await run_on(ota.broker, "a", "ota.probe") for _ in range(20)]
        assert len({a["pid"] for a in answers}) == 1, answers
        assert {a["code_version"] for a in answers} == {"1.0.0"}
        assert await run_on(ota.broker, "a") == "v1"
        assert [n.pid for n in await ota.broker.get_nodes() if n.node_id == "a"] == [answers[0]["pid"]]


async def test_a_supervisor_killed_mid_switch_restarts_into_one_spore_on_the_committed_release(
    ota_hive: OTAHive,
) -> None:
    # Given a supervised spore on v1, switching to v2
    first = ota_hive.spore("a")
    v1 = ota_hive.package("1.0.0", version_app('"v1"'))
    v2 = ota_hive.package("2.0.0", version_app('"v2"'))
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a"])
        assert (await ota.rollout(v1, ["a"], timeout=60))["ok"]
        rollout = asyncio.create_task(ota.rollout(v2, ["a"], timeout=60))
        probation = first.root / "probation.json"

        async def switching() -> bool:
            return probation.exists()

        await async_wait_until(switching, timeout=30, interval=0.01, what="the switch to v2 to begin")

        # When the supervisor is killed with SIGKILL during the probation, and started again
        first.kill()
        rollout.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rollout
        ota_hive.spore("a")

        # Then pinned tasks are all answered by one process, running the release the switch committed
        async def committed() -> bool:
            return not probation.exists() and bool(await ota.broker.get_nodes())

        await async_wait_until(committed, timeout=60, what="the restarted supervisor to finish the switch")
        answers = [await run_on(ota.broker, "a", "ota.probe") for _ in range(20)]
        assert len({a["pid"] for a in answers}) == 1, answers
        assert {a["code_version"] for a in answers} == {"2.0.0"}
        assert await run_on(ota.broker, "a") == "v2"
        assert [n.pid for n in await ota.broker.get_nodes() if n.node_id == "a"] == [answers[0]["pid"]]
