"""Least privilege: the hive runs with the three users ``hive redis acl`` writes, on a Redis whose ``default``
user is off, and Redis's ACL LOG stays empty (a command added to the code without a rule fails here)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from redis.exceptions import NoPermissionError

from hive_framework import acl
from hive_framework.config import HiveConfig
from hive_framework.hive import Hive
from hive_framework.kernel import Kernel
from hive_framework.models import TaskStatus
from hive_framework.testing import NexusProcess, SporeProcess, async_wait_until, fast_config

from .redis_servers import RedisProcess

pytestmark = pytest.mark.redis

ADMIN = "acl-test-admin"
ADMIN_PASSWORD = "admin-secret-for-tests"
PASSWORDS = {"spore": "spore-secret-1", "client": "client-secret-2", "nexus": "nexus-secret-3"}
#: The integration tests run under the users (their processes' spores as the spore user, everything in the
#: test process, in-process spores included, as the nexus user): about a tenth of the suite, every part
#: of the task life cycle (retries, dead letters, priorities, broadcasts, recovery of a killed spore).
SUITE = ("tests/test_integration_retries.py", "tests/test_integration_control.py",
         "tests/test_integration_priority.py", "tests/test_integration_resilience.py",
         "tests/test_integration_validation.py", "tests/test_mapreduce_deps.py", "tests/test_mapreduce_map.py",
         "tests/test_engine_contract.py", "tests/test_health.py")


def hive_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def acl_server(tmp: Path, config: HiveConfig) -> RedisProcess:
    """A Redis with ``default`` off, an admin for the test, and the hive's users from ``hive redis acl --write``."""
    aclfile = tmp / "users.acl"
    env = {**{acl.PASSWORD_ENV[r]: p for r, p in PASSWORDS.items()}, **config.to_env()}
    written = hive_command(["redis", "acl", "--write", str(aclfile)], env)
    assert written.returncode == 0, written.stderr
    assert oct(aclfile.stat().st_mode & 0o777) == "0o600"
    with aclfile.open("a") as out:
        out.write("user default off\n")
        out.write(f"user {ADMIN} on >{ADMIN_PASSWORD} ~* &* +@all\n")
    server = RedisProcess(tmp, ["--aclfile", str(aclfile), "--acllog-max-len", "1000"], name="acl")
    server.wait_listening()
    return server


def url(server: RedisProcess, user: str, password: str) -> str:
    return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def role_url(server: RedisProcess, config: HiveConfig, role: str) -> str:
    return url(server, acl.user_name(config, role), PASSWORDS[role])


def acl_log(server: RedisProcess) -> list[dict[str, Any]]:
    admin = redis.Redis.from_url(url(server, ADMIN, ADMIN_PASSWORD), decode_responses=True)
    try:
        return list(admin.acl_log(count=1000))
    finally:
        admin.close()


@pytest.fixture
def namespace_config() -> HiveConfig:
    return fast_config("redis://127.0.0.1:1/0", apps=("tests.apps.basic",))


@pytest.fixture
def server(tmp_path: Path, namespace_config: HiveConfig) -> Iterator[RedisProcess]:
    proc = acl_server(tmp_path, namespace_config)
    try:
        yield proc
    finally:
        proc.stop()


def test_printed_rules_hold_no_password(server: RedisProcess, namespace_config: HiveConfig) -> None:
    env = {**{acl.PASSWORD_ENV[r]: p for r, p in PASSWORDS.items()}, **namespace_config.to_env()}
    printed = hive_command(["redis", "acl"], env)
    assert printed.returncode == 0, printed.stderr
    assert len(printed.stdout.splitlines()) == 3
    assert not any(secret in printed.stdout for secret in PASSWORDS.values())
    assert f"~{namespace_config.key_prefix}:*" in printed.stdout and "+flushall" not in printed.stdout
    # and `hive redis check` works for a user that may not run INFO
    spore_env = namespace_config.evolve(redis_url=role_url(server, namespace_config, "spore")).to_env()
    checked = hive_command(["redis", "check"], spore_env)
    assert checked.returncode == 0 and "answers (this user may not run INFO)" in checked.stdout, checked.stderr
    missing = hive_command(["redis", "acl"], namespace_config.to_env())
    assert missing.returncode == 1 and "REDIS_ACL_SPORE_PASSWORD" in missing.stderr


async def test_the_hive_runs_with_the_three_users(server: RedisProcess, namespace_config: HiveConfig,
                                                  tmp_path: Path) -> None:
    # Given a nexus and two spores as their own users, and a client as the client user
    config = namespace_config.evolve(watchdog_interval=0.3)
    nexus = NexusProcess(config.evolve(redis_url=role_url(server, config, "nexus")), "acl-nexus", log_dir=tmp_path)
    spore_config = config.evolve(redis_url=role_url(server, config, "spore"))
    spores = [SporeProcess(spore_config, f"acl-spore-{i}", concurrency=2, log_dir=tmp_path) for i in (1, 2)]
    try:
        async with Hive(Kernel(config.evolve(redis_url=role_url(server, config, "client")))) as hive:
            async def both_up() -> bool:
                return len(await hive.nodes()) == 2

            await async_wait_until(both_up, timeout=60, what="both spores' heartbeats")
            # When the client drives the whole life cycle: results, retries, a dead letter, dependencies,
            # a map, a cancellation and a broadcast
            assert await hive.result(await hive.submit("add", {"a": 1, "b": 2}), timeout=60) == 3
            flaky = await hive.submit("flaky", {"failures": 1})
            dead = await hive.submit("always_fail", {})
            first = await hive.submit("echo", {"n": 1})
            second = await hive.submit("echo", {"n": 2}, depends_on=[first])
            assert (await hive.wait(second, timeout=60)).status == TaskStatus.COMPLETED
            assert await hive.result(flaky, timeout=60) == "ok after 1 failures"
            assert (await hive.wait(dead, timeout=60)).status == TaskStatus.FAILED
            assert await hive.map("add", [{"a": i, "b": i} for i in range(5)], timeout=60) == [0, 2, 4, 6, 8]
            gated = await hive.submit("sleep_async", {"seconds": 30})
            assert await hive.cancel(gated)
            ping = await hive.broadcast("PING")
            assert len(await hive.broker.collect_replies(ping, expected=2, timeout=30)) == 2
            # and a spore dies with a task in hand: the nexus hands it to the other one
            victim_task = await hive.submit("sleep_async", {"seconds": 1}, node=spores[0].name)

            async def running() -> bool:
                message = await hive.status(victim_task)
                return message is not None and message.status == TaskStatus.RUNNING

            await async_wait_until(running, timeout=60, what="the pinned task to start")
            spores[0].kill()
            recovered = await hive.wait(victim_task, timeout=90)
            assert recovered.status in (TaskStatus.COMPLETED, TaskStatus.FAILED), recovered
            assert isinstance(await hive.queue_stats(), dict)
    finally:
        for proc in (*spores, nexus):
            if proc.proc.poll() is None:
                proc.stop()
    # Then Redis refused nothing any of them sent
    denied = acl_log(server)
    assert denied == [], "commands outside the ACL rules:\n" + "\n".join(
        f"{d.get('username')}: {d.get('reason')} {d.get('object')} ({d.get('context')})" for d in denied
    )
    assert "Traceback" not in nexus.log(), nexus.log()


def test_a_spore_user_cannot_leave_its_prefix(server: RedisProcess, namespace_config: HiveConfig) -> None:
    admin = redis.Redis.from_url(url(server, ADMIN, ADMIN_PASSWORD))
    spore = redis.Redis.from_url(role_url(server, namespace_config, "spore"))
    try:
        admin.set("another-hive:task:1", "secret")
        spore.set(f"{namespace_config.key_prefix}:probe", "mine")
        assert spore.get(f"{namespace_config.key_prefix}:probe") == b"mine"
        with pytest.raises(NoPermissionError):
            spore.get("another-hive:task:1")
        with pytest.raises(NoPermissionError):
            spore.flushall()
        with pytest.raises(NoPermissionError):
            spore.config_get("*")
        with pytest.raises(NoPermissionError):
            spore.keys("*")
        with pytest.raises(NoPermissionError):
            spore.publish("another-hive:broadcast", "x")
        assert admin.get("another-hive:task:1") == b"secret"
    finally:
        spore.close()
        admin.close()
    # and the default user is off: no password, no entry
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port).ping()


def test_integration_suite_runs_as_the_hive_users(tmp_path: Path) -> None:
    # Given users for the test namespaces (every test prefix starts with hivetest:)
    config = HiveConfig(key_prefix="hivetest", high_priority_queue="hivetest:high",
                        background_queue="hivetest:background", broadcast_channel="hivetest:*")
    proc = acl_server(tmp_path, config)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
        env.update({
            "HIVE_TEST_REDIS_URL": role_url(proc, config, "nexus"),
            "HIVE_TEST_SPORE_REDIS_URL": role_url(proc, config, "spore"),
            "HIVE_REQUIRE_REDIS": "1",
        })
        if os.environ.get("HIVE_TEST_BROKER"):
            env["HIVE_TEST_BROKER"] = os.environ["HIVE_TEST_BROKER"]
        # When a tenth of the integration suite runs against it
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITE],
                             env=env, capture_output=True, text=True, timeout=900, check=False)
        print(run.stdout.splitlines()[-1] if run.stdout else run.stderr)
        # Then it passes and Redis refused nothing
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        denied = acl_log(proc)
        assert denied == [], "\n".join(f"{d.get('username')}: {d.get('reason')} {d.get('object')}" for d in denied)
    finally:
        proc.stop()
