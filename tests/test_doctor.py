"""``hive doctor``: each check finds its problem and says what to fix; the exit status says whether one failed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from hive_framework import HiveConfig, NodeInfo, wire
from hive_framework.doctor import _memory_check
from hive_framework.testing import wait_until

from .first_hour_helpers import error_lines, make_myapp, password_redis, run_hive, user_env

pytestmark = pytest.mark.redis


def doctor(config: HiveConfig | None, cwd: Path, *args: str, **env: str) -> tuple[int, dict[str, list[dict[str, str]]]]:
    done = run_hive("doctor", "--json", *args, env=user_env(config, **env), cwd=cwd)
    by_name: dict[str, list[dict[str, str]]] = {}
    for check in json.loads(done.stdout):
        by_name.setdefault(check["name"], []).append(check)
    return done.returncode, by_name


def states(checks: list[dict[str, str]]) -> set[str]:
    return {c["state"] for c in checks}


def online(config: HiveConfig) -> int:
    client = redis.Redis.from_url(config.effective_redis_url())
    try:
        return int(client.hlen(f"{config.key_prefix}:nodeinfo"))
    finally:
        client.close()


def test_a_working_hive_is_all_ok(hive_config: HiveConfig, spore_processes, nexus_processes, tmp_path: Path) -> None:
    # Given a spore serving tests.apps.basic and a nexus
    spore_processes("doctor-spore", apps=("tests.apps.basic",))
    nexus_processes("doctor-nexus")
    wait_until(lambda: online(hive_config) == 1, timeout=60, what="the spore online")
    key = f"{hive_config.key_prefix}:nexus:leader"
    wait_until(lambda: redis.Redis.from_url(hive_config.effective_redis_url()).get(key), timeout=60,
               what="the nexus leading")
    # When the doctor looks
    code, checks = doctor(hive_config, tmp_path)
    # Then Redis, auth, spores (with their task types), nexus and clocks are ok, and it exits 0
    assert code == 0
    assert states(checks["redis"]) == {"ok"} and "Redis " in checks["redis"][0]["detail"]
    assert states(checks["auth"]) == {"ok"}
    spore = next(c for c in checks["spores"] if "doctor-spore" in c["detail"])
    assert spore["state"] == "ok" and "echo" in spore["detail"] and "add" in spore["detail"]
    assert checks["nexus"][0]["state"] == "ok" and "leads" in checks["nexus"][0]["detail"]
    assert states(checks["clock"]) == {"ok"}


def test_no_spore_and_no_nexus_are_warnings_with_the_fix(hive_config: HiveConfig, tmp_path: Path) -> None:
    make_myapp(tmp_path)
    code, checks = doctor(hive_config, tmp_path, "--app", "myapp.tasks")
    assert code == 0  # warnings only
    assert [c["state"] for c in checks["spores"]] == ["warn"]
    assert "hive spore --app MODULE" in checks["spores"][0]["fix"]
    assert checks["nexus"][0]["state"] == "warn" and "hive nexus" in checks["nexus"][0]["fix"]


def test_a_wrong_password_fails_the_auth_check(tmp_path: Path) -> None:
    with password_redis("right-horse-battery") as url:
        code, checks = doctor(None, tmp_path, REDIS_URL=url.replace("redis://", "redis://:wrong@"))
    assert code == 1
    assert checks["auth"][0]["state"] == "fail" and "refused the password" in checks["auth"][0]["detail"]
    assert "REDIS_URL" in checks["auth"][0]["fix"]


def test_a_redis_that_evicts_keys_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    # Given a private Redis that evicts any key past its maxmemory
    with password_redis("right-horse-battery") as url:
        secret_url = url.replace("redis://", "redis://:right-horse-battery@")
        client = redis.Redis.from_url(secret_url)
        try:
            client.config_set("maxmemory", "100mb")
            client.config_set("maxmemory-policy", "allkeys-lru")
        finally:
            client.close()
        # When the doctor looks
        code, checks = doctor(None, tmp_path, REDIS_URL=secret_url)
    # Then the memory check warns, naming the policy and the fix, and the exit status stays 0 (a warning)
    assert code == 0
    (memory,) = checks["memory"]
    assert memory["state"] == "warn" and "allkeys-lru" in memory["detail"] and "100" in memory["detail"]
    assert "noeviction" in memory["fix"]


def test_redis_memory_check_reads_eviction_and_the_expiry_backlog() -> None:
    # the shared server's defaults: no maxmemory
    assert _memory_check({"maxmemory": 0, "maxmemory_policy": "noeviction"}, {"expired_stale_perc": 0.0}).state == "ok"
    # a limit with noeviction is what the hive wants
    fine = _memory_check({"maxmemory": 10**8, "maxmemory_human": "95.37M", "maxmemory_policy": "noeviction"},
                         {"expired_stale_perc": 3.5})
    assert fine.state == "ok" and "95.37M, noeviction" in fine.detail and "4 %" in fine.detail
    # volatile-* evicts keys with a TTL: leases, heartbeats and finished records
    assert _memory_check({"maxmemory": 10**8, "maxmemory_policy": "volatile-lru"}, {}).state == "warn"
    # a fifth of the keys expired and not reclaimed: the expiry effort's fix
    backlog = _memory_check({"maxmemory": 0, "maxmemory_policy": "noeviction"}, {"expired_stale_perc": 23.1})
    assert backlog.state == "warn" and "23 %" in backlog.detail and "active-expire-effort" in backlog.fix
    # a field a Redis does not send (older, or another server) reads as none
    assert _memory_check({}, {}).state == "ok"


def test_redis_down_fails_with_what_to_do(tmp_path: Path) -> None:
    done = run_hive("doctor", env=user_env(REDIS_URL="redis://127.0.0.1:1/0"), cwd=tmp_path)
    assert done.returncode == 1
    assert "FAIL  redis    no Redis answers at redis://127.0.0.1:1/0" in done.stdout
    assert "fix: start one, set REDIS_URL" in done.stdout
    assert len(error_lines(done.stderr)) == 1


def test_an_app_module_that_does_not_import_fails_with_file_and_line(hive_config: HiveConfig, tmp_path: Path) -> None:
    make_myapp(tmp_path, tasks="from hive_framework import task\nraise RuntimeError('boom')\n")
    code, checks = doctor(hive_config, tmp_path, "--app", "myapp.tasks")
    assert code == 1
    assert checks["apps"][0]["state"] == "fail"
    assert "tasks.py:2" in checks["apps"][0]["detail"] and "RuntimeError: boom" in checks["apps"][0]["detail"]
    assert states(checks["redis"]) == {"ok"}  # the other checks still ran


def test_a_spore_clock_ahead_of_redis_is_reported(hive_config: HiveConfig, tmp_path: Path) -> None:
    # Given a spore whose heartbeat carries a time 30 s ahead of Redis's clock
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    node = NodeInfo(node_id="skewed", node_name="skewed", host="far-away", pid=1, started_at=ahead,
                    last_heartbeat=ahead, task_types=["echo"])
    client = redis.Redis.from_url(hive_config.effective_redis_url())
    try:
        client.set(f"{hive_config.key_prefix}:node:skewed", wire.dumps(node), px=60_000)
        client.sadd(f"{hive_config.key_prefix}:nodes", "skewed")
    finally:
        client.close()
    # When the doctor looks
    code, checks = doctor(hive_config, tmp_path)
    # Then the clock check names the spore, the direction and what to do
    clock = [c for c in checks["clock"] if "skewed" in c["detail"]]
    assert len(clock) == 1 and clock[0]["state"] == "warn", checks["clock"]
    assert "ahead of Redis" in clock[0]["detail"] and "far-away" in clock[0]["fix"]
    assert code == 0


def test_a_broken_plugin_is_listed(tmp_path: Path, hive_config: HiveConfig) -> None:
    from .test_first_hour import broken_distribution

    site = broken_distribution(tmp_path / "site")
    code, checks = doctor(hive_config, tmp_path, PYTHONPATH=str(site))
    assert code == 1
    broken = [c for c in checks["plugins"] if "'broken'" in c["detail"]]
    assert broken and broken[0]["state"] == "fail" and "HIVE_DISABLE_PLUGINS=broken" in broken[0]["fix"]
