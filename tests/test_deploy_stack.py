"""StackManager on a machine without a container engine: the fallback Redis keeps its AOF across a kill -9."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from hive_framework import MessageBroker
from hive_framework.embedded import free_port, redis_answers
from hive_framework.kernel import Kernel
from hive_framework.models import TaskStatus
from hive_framework.stack import StackManager
from hive_framework.testing import fast_config, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


@pytest.fixture
def manager(tmp_path: Path) -> StackManager:
    url = f"redis://127.0.0.1:{free_port()}/0"
    stack = StackManager(fast_config(url, apps=("tests.apps.basic",)), data_dir=tmp_path / "redis-data")
    if stack.container_engine() is not None:
        pytest.skip("a container engine answers here: the fallback is not what deploy_default_hive_stack runs")
    yield stack
    stack.stop_local_redis()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False


async def test_fallback_redis_keeps_a_task_across_kill_9(manager: StackManager) -> None:
    # Given no container engine
    ok, message = manager.deploy_default_hive_stack()
    # Then the fallback says so and names its data folder
    assert ok, message
    assert "no container engine" in message and str(manager.data_dir) in message and "AOF" in message
    url = manager.config.effective_redis_url()
    assert redis_answers(url)
    pid = manager.local_pid()
    assert pid is not None
    assert (manager.data_dir / "appendonlydir").is_dir()  # Redis 7 keeps its AOF here

    # When a task is enqueued and the server is killed without a chance to save
    async with MessageBroker(Kernel(manager.config)) as broker:
        task_id = await broker.enqueue_task("echo", {"n": 1}, "high_priority")
        before = await broker.get_queue_stats()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _pid_gone(pid), what="redis-server to die")
    assert not redis_answers(url)

    # And the stack is deployed again
    ok, message = manager.deploy_default_hive_stack()
    assert ok, message
    assert manager.local_pid() not in (None, pid)

    # Then the task is back, still queued
    async with MessageBroker(Kernel(manager.config)) as broker:
        task = await broker.get_task_status(task_id)
        after = await broker.get_queue_stats()
    assert task is not None and task.status == TaskStatus.PENDING
    assert after["high_priority_queue"] == before["high_priority_queue"] == 1


def test_a_second_deploy_reuses_the_running_redis(manager: StackManager) -> None:
    assert manager.deploy_default_hive_stack()[0]
    pid = manager.local_pid()
    ok, message = manager.deploy_default_hive_stack()
    assert ok and "already answers" in message
    assert manager.local_pid() == pid


def test_a_remote_redis_is_not_started_here(tmp_path: Path) -> None:
    stack = StackManager(fast_config("redis://redis.example.invalid:6379/0"), data_dir=tmp_path, engines=())
    ok, message = stack.deploy_default_hive_stack()
    assert not ok
    assert "not on this machine" in message and "no container engine" in message
