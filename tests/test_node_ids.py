"""One live process per node id: a second spore started under the name of a live one is refused, with one line
and a non-zero exit; a spore restarted under the name of a dead one takes its place."""

from __future__ import annotations

import pytest

from hive_framework import Kernel, hookimpl
from hive_framework.testing import async_wait_until

from .integration_helpers import BASIC, wait_exit, wait_for_nodes

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def hive_kernel(hive_config):
    return Kernel(hive_config, apps=[BASIC])


async def test_a_second_spore_under_a_live_node_id_is_refused(hive, spore_processes):
    # Given a live spore named "one"
    first = spore_processes("one", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["one"])

    # When a second process starts under the same name
    second = spore_processes("one", apps=(BASIC,), concurrency=1)

    # Then it refuses to run, naming the live one, and exits non-zero; the first one goes on serving
    assert await wait_exit(second, timeout=30) != 0
    assert f"in use by a live spore (pid {first.pid}" in second.log()
    assert [n.pid for n in await hive.nodes()] == [first.pid]
    done = await hive.wait(await hive.submit("echo", {"x": 1}, node="one"), timeout=20)
    assert done.result["pid"] == first.pid


async def test_a_spore_restarted_under_a_killed_ones_name_takes_its_place(hive, spore_processes):
    # Given a spore named "two" killed with SIGKILL (its heartbeat lives on for a few intervals)
    first = spore_processes("two", apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, ["two"])
    first.kill()

    # When it is started again under the same name
    again = spore_processes("two", apps=(BASIC,), concurrency=1)

    # Then the new process serves under the id
    async def serving() -> bool:
        return [n.pid for n in await hive.nodes()] == [again.pid]

    await async_wait_until(serving, timeout=30, what="the restarted spore to take the id")
    done = await hive.wait(await hive.submit("echo", {"x": 1}, node="two"), timeout=20)
    assert done.result["pid"] == again.pid


class _Refuser:
    """A plugin that refuses one broadcast command, as the OTA plugin refuses a bad package."""

    @hookimpl
    def on_broadcast(self, message, context):
        return "rejected: not signed by a trusted key" if message.command == "UPDATE_ME" else None


async def test_a_broadcast_a_plugin_refused_is_answered_not_ok(hive, hive_config, run_spore):
    await run_spore(Kernel(hive_config, apps=[BASIC], plugins=[_Refuser()]), name="refuser")
    message_id = await hive.broadcast("UPDATE_ME")
    (reply,) = await hive.broker.collect_replies(message_id, expected=1, timeout=20)
    assert (reply.ok, reply.detail) == (False, "rejected: not signed by a trusted key")
    # A command handled without a refusal (the built-in PING) is answered ok
    message_id = await hive.broadcast("PING")
    (reply,) = await hive.broker.collect_replies(message_id, expected=1, timeout=20)
    assert reply.ok
