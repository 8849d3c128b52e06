"""A hive across hosts: Redis, a nexus and spores each in a network namespace of its own (test hosts made by
``hive_framework.testing.netns``), with partitions (a host's link set down) and a slow, lossy link (a
``FaultProxy`` between one host and Redis). Real processes; both engines (``HIVE_TEST_BROKER``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_framework import Hive, HiveConfig, Kernel, TaskSpec, TaskStatus
from hive_framework.testing import async_wait_until, child_env, fast_config, hive_argv
from hive_framework.testing.faultproxy import FaultProxy
from hive_framework.testing.netns import Host, TestNet, require_netns

from .integration_helpers import REPO_ROOT, count_outcomes

SKILLS = "tests.apps.skills"

pytestmark = [pytest.mark.slow]


@pytest.fixture
def net_hosts(tmp_path: Path) -> Iterator[Any]:
    """``make(names)``: a TestNet of those hosts (deleted after the test); skipped where not allowed."""
    require_netns()
    made: list[TestNet] = []

    def make(names: list[str]) -> TestNet:
        net = TestNet(names).__enter__()
        made.append(net)
        return net

    yield make
    for net in made:
        net.delete()


def start_spore(host: Host, config: Any, name: str, skills: str, log_dir: Path, *extra: str,
                redis_url: str | None = None, concurrency: int = 4) -> Any:
    env = child_env(config, {"HIVE_APP": "", "PYTHONPATH": str(REPO_ROOT), "TEST_SKILLS_SERVED": skills,
                             **({"REDIS_URL": redis_url} if redis_url else {})})
    argv = hive_argv("spore", "--name", name, "--app", SKILLS, "--concurrency", str(concurrency), *extra)
    return host.popen(argv, env=env, log=log_dir / f"spore-{name}.log", cwd=REPO_ROOT)


def start_nexus(host: Host, config: Any, log_dir: Path) -> Any:
    env = child_env(config, {"HIVE_APP": "", "PYTHONPATH": str(REPO_ROOT)})
    return host.popen(hive_argv("nexus", "--no-monitor"), env=env, log=log_dir / "nexus.log", cwd=REPO_ROOT)


@contextlib.asynccontextmanager
async def client(config: Any) -> Any:
    hive = Hive(Kernel(config))
    await hive.open()
    try:
        yield hive
    finally:
        await hive.close()


async def wait_nodes(hive: Hive, names: set[str], timeout: float = 60) -> None:
    async def online() -> bool:
        return names <= {n.node_name for n in await hive.nodes()}

    await async_wait_until(online, timeout=timeout, what=f"spores {sorted(names)} online")


async def test_hosts_with_different_skills_share_one_redis(net_hosts: Any, tmp_path: Path) -> None:
    # Given Redis on one host, a nexus on another and two spore hosts with different skills and tags
    net = net_hosts(["redis", "nexus", "gpu", "cpu"])
    config = fast_config(net["redis"].start_redis())
    start_nexus(net["nexus"], config, tmp_path)
    start_spore(net["gpu"], config, "gpu-1", "resize,scan", tmp_path, "--tag", "gpu")
    start_spore(net["cpu"], config, "cpu-1", "scan,scrape", tmp_path)
    async with client(config) as hive:
        await wait_nodes(hive, {"gpu-1", "cpu-1"})
        # When a client (on the test's own host) submits their types by name, and one no host serves yet
        kinds = ["resize", "scan", "scrape"]
        ids = await hive.submit_many([TaskSpec(task_type=kinds[i % 3], payload={"i": i}) for i in range(300)])
        pinned = [await hive.submit("scan", {}, requirements={"tags": ["gpu"]}) for _ in range(5)]
        late = await hive.submit("transcode", {}, allow_unknown=True)
        # Then each runs on a host that serves its type (and the gpu-tagged scans on the gpu host)
        done = [await hive.wait(t, timeout=120) for t in ids + pinned]
        hosts = {"gpu-1": {"resize", "scan"}, "cpu-1": {"scan", "scrape"}}
        assert Counter(m.status for m in done) == {TaskStatus.COMPLETED: len(done)}
        assert all(m.task_type in hosts[m.assigned_node] for m in done)
        assert {m.assigned_node for m in done[-5:]} == {"gpu-1"}
        print(f"\nacross hosts: {Counter((m.assigned_node, m.task_type) for m in done)}")
        # and the unserved one waits, saying why, until a host serving it joins
        assert (await hive.status(late)).reason == "no online spore serves `transcode`"
        start_spore(net["cpu"], config, "cpu-2", "transcode", tmp_path)
        finished = await hive.wait(late, timeout=60)
        assert (finished.status, finished.assigned_node) == (TaskStatus.COMPLETED, "cpu-2")


async def test_a_partitioned_host_loses_nothing_and_records_each_task_once(net_hosts: Any, tmp_path: Path) -> None:
    # Given two spore hosts running 100 tasks, and a nexus (which re-runs the work of spores that go silent)
    net = net_hosts(["redis", "nexus", "a", "b"])
    config = fast_config(net["redis"].start_redis())
    start_nexus(net["nexus"], config, tmp_path)
    start_spore(net["a"], config, "a", "scan", tmp_path, "--tag", "host-a", concurrency=10)
    start_spore(net["b"], config, "b", "scan", tmp_path, concurrency=10)
    async with client(config) as hive:
        await wait_nodes(hive, {"a", "b"})
        ids = await hive.submit_many([TaskSpec(task_type="scan", payload={"seconds": 0.5}, allow_unknown=True)
                                      for _ in range(100)])
        await count_outcomes(hive, ids)

        async def a_runs() -> bool:
            return any(m is not None and m.assigned_node == "a" and m.status == TaskStatus.RUNNING
                       for m in await hive.broker.get_tasks(ids))

        await async_wait_until(a_runs, timeout=60, what="host a to run tasks")
        # When host a is cut off for longer than its lease, then healed
        net["a"].partition()
        cut_at = time.monotonic()

        async def a_gone() -> bool:
            return "a" not in {n.node_name for n in await hive.nodes()}

        await async_wait_until(a_gone, timeout=60, what="host a's heartbeat to expire")
        # the cut is held for twice the lease (a duration of the fault, not a wait for an event)
        await asyncio.sleep(max(config.lease_seconds * 2 - (time.monotonic() - cut_at), 0))
        net["a"].heal()
        healed_at = time.monotonic()
        done = [await hive.wait(t, timeout=180) for t in ids]
        await wait_nodes(hive, {"a"}, timeout=60)
        back_after = time.monotonic() - healed_at
        # Then nothing was lost and every task has exactly one recorded outcome
        outcomes = [int(await hive.broker.redis.llen(hive.broker.keys.done(t))) for t in ids]
        print(f"\npartition: {Counter(m.status for m in done)}; by host {Counter(m.assigned_node for m in done)}; "
              f"attempts {Counter(m.attempt for m in done)}; recorded outcomes per task {Counter(outcomes)}; "
              f"host a back after {back_after:.1f}s")
        assert Counter(m.status for m in done) == {TaskStatus.COMPLETED: 100}
        assert Counter(outcomes) == {1: 100}
        # and the healed host takes work again: tasks only it may run complete there (unpinned ones could all
        # go to b, which never stopped claiming, before a's claim loop is back from its back-off)
        more = await hive.submit_many([TaskSpec(task_type="scan", payload={"seconds": 0.2},
                                                requirements={"tags": ["host-a"]}) for _ in range(10)])
        ran = [await hive.wait(t, timeout=60) for t in more]
        assert Counter((m.status, m.assigned_node) for m in ran) == {(TaskStatus.COMPLETED, "a"): 10}


async def test_a_host_behind_a_slow_lossy_link_completes_everything(net_hosts: Any, tmp_path: Path) -> None:
    # Given a spore host that reaches Redis only through a proxy with 50 ms round trips that resets connections
    net = net_hosts(["redis", "far"])
    redis_url = net["redis"].start_redis()
    config = fast_config(redis_url)
    proxy = FaultProxy((net["redis"].address, 6379), listen=(net.gateway, 0), delay_up=0.025, delay_down=0.025)
    host, port = proxy.start()
    try:
        start_spore(net["far"], config, "far", "scan", tmp_path, redis_url=f"redis://{host}:{port}/0",
                    concurrency=20)
        async with client(config) as hive:
            await wait_nodes(hive, {"far"})
            ids = await hive.submit_many([TaskSpec(task_type="scan", payload={"i": i}, allow_unknown=True)
                                          for i in range(300)])
            # When its connections are reset three times while it works
            # (each reset once the spore has made progress since the last one, so it must have reconnected)
            for _ in range(3):
                before = (await hive.queue_stats())["tasks_completed"]

                async def progressed(before: int = before) -> bool:
                    return bool((await hive.queue_stats())["tasks_completed"] > before + 5)

                await async_wait_until(progressed, timeout=60, what="the far spore to complete more tasks")
                proxy.reset_all()
            done = [await hive.wait(t, timeout=180) for t in ids]
            print(f"\nslow link: {Counter(m.status for m in done)}; resets {proxy.stats.resets}; "
                  f"connections {proxy.stats.connections}")
            # Then every task completed
            assert Counter(m.status for m in done) == {TaskStatus.COMPLETED: 300}
            assert proxy.stats.resets >= 1
    finally:
        proxy.stop()


def readme_commands() -> list[tuple[str, str]]:
    """(host, command) of each line of the README's "Running across machines" block."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running across machines", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    out, host = [], ""
    for line in block.splitlines():
        if line.startswith("# "):
            host = line[2:].split(" host", 1)[0].split(",", 1)[0]
        elif line.strip():
            out.append((host, line))
    return out


async def test_the_readme_commands_for_several_machines_work_across_hosts(net_hosts: Any, tmp_path: Path) -> None:
    # Given one test host per host the README names, with the README's commands run in them as written
    # (the redis address and the app modules swapped for the test's)
    commands = readme_commands()
    assert [h for h, _ in commands] == ["redis", "nexus", "gpu", "scan", "any machine"]
    net = net_hosts(["redis", "nexus", "gpu", "scan", "client"])
    address = net["redis"].address
    apps = {"myapp.images": "resize", "myapp.scans": "scan"}
    venv_bin = str(Path(sys.executable).parent)
    results = {}
    for host_name, line in commands:
        command = line.replace("10.0.0.2", address).replace('--save ""', '--save "" --dir ' + str(tmp_path))
        env = child_env(None, {"PYTHONPATH": str(REPO_ROOT), "PATH": f"{venv_bin}:{os.environ['PATH']}"})
        for module, served in apps.items():
            if module in command:
                command = command.replace(module, SKILLS)
                env["TEST_SKILLS_SERVED"] = served
        host = net["client" if host_name == "any machine" else host_name]
        if "hive submit" in command:
            readme_config = HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None,
                                            redis_url=f"redis://{address}:6379/0")
            async with client(readme_config) as hive:

                async def both_up() -> bool:
                    return len(await hive.nodes()) == 2

                await async_wait_until(both_up, timeout=60, what="the README's two spores to come online")
            results[host_name] = await asyncio.to_thread(host.run, ["bash", "-c", command], env=env, cwd=REPO_ROOT,
                                                         timeout=120)
        else:
            host.popen(["bash", "-c", command], env=env, log=tmp_path / f"{host_name}.log", cwd=REPO_ROOT)
            if host_name == "redis":
                await async_wait_until(
                    lambda: asyncio.to_thread(lambda: net["redis"].run(
                        ["redis-cli", "-h", address, "ping"], timeout=5).stdout.strip() == "PONG"),
                    timeout=30, what="the README's redis-server")
    # Then the task submitted by name from a machine with no app ran on the gpu host's spore
    submitted = results["any machine"]
    assert submitted.returncode == 0, submitted.stderr
    ran = json.loads(submitted.stdout)
    assert ran["status"] == "completed" and ran["requirements"] == {"tags": ["gpu"]}
    assert (ran["result"]["type"], ran["priority"], ran["timeout"]) == ("resize", 10, 7.0)
