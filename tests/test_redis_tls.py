"""TLS: ``rediss://`` to a private ``redis-server --tls-port`` with a throw-away CA, verification on by default."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_framework.config import HiveConfig
from hive_framework.errors import EXIT_UNAVAILABLE, RedisUnavailable
from hive_framework.hive import Hive
from hive_framework.kernel import Kernel
from hive_framework.testing import SporeProcess, fast_config

from .redis_servers import RedisProcess, make_ca

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, dict[str, Path]]]:
    """A Redis that speaks only TLS and asks for (but does not require) a client certificate."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = make_ca(tmp)
    server = RedisProcess(tmp, [
        "--tls-cert-file", str(ca["server_cert"]), "--tls-key-file", str(ca["server_key"]),
        "--tls-ca-cert-file", str(ca["ca"]), "--tls-auth-clients", "optional",
    ], tls_only=True, name="tls")
    try:
        server.wait_listening()
        yield server, ca
    finally:
        server.stop()


def tls_config(server: RedisProcess, **settings: object) -> HiveConfig:
    return fast_config(f"rediss://127.0.0.1:{server.port}/0", apps=("tests.apps.basic",), **settings)


def hive_command(config: HiveConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env.update(config.to_env())
    return subprocess.run([sys.executable, "-m", "hive_framework", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_task_round_trip_over_tls(tls_server: tuple[RedisProcess, dict[str, Path]], tmp_path: Path) -> None:
    # Given a spore process and a client that reach Redis only over rediss://, verifying with the test CA
    server, ca = tls_server
    config = tls_config(server, redis_ca_file=str(ca["ca"]))
    spore = SporeProcess(config, "tls-spore", log_dir=tmp_path)
    try:
        async with Hive(Kernel(config)) as hive:
            # When a task is submitted
            task_id = await hive.submit("add", {"a": 2, "b": 40})
            # Then the spore ran it and the result came back over TLS
            assert await hive.result(task_id, timeout=60) == 42
    finally:
        assert spore.stop() == 0, spore.log()
    # and `hive redis check` reaches the same server (the plain port is off: only TLS answers)
    check = hive_command(config, "redis", "check")
    assert check.returncode == 0, check.stderr
    assert f"rediss://127.0.0.1:{server.port}/0: redis 7" in check.stdout


async def test_client_certificate_is_sent_when_configured(tls_server: tuple[RedisProcess, dict[str, Path]]) -> None:
    server, ca = tls_server
    config = tls_config(server, redis_ca_file=str(ca["ca"]), redis_cert_file=str(ca["client_cert"]),
                        redis_key_file=str(ca["client_key"]))
    async with Hive(Kernel(config)) as hive:
        task_id = await hive.submit("add", {"a": 1, "b": 1})
        assert (await hive.status(task_id)) is not None


def test_wrong_ca_is_refused_with_one_line(tls_server: tuple[RedisProcess, dict[str, Path]], tmp_path: Path) -> None:
    # Given a client that trusts another CA than the one that signed the server's certificate
    server, _ = tls_server
    other = make_ca(tmp_path, "other")
    config = tls_config(server, redis_ca_file=str(other["ca"]))
    # When it connects, it is refused: one line naming the cause, no traceback
    result = hive_command(config, "redis", "check")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    print(lines[0])
    assert "TLS certificate verification failed" in lines[0] and "Traceback" not in result.stderr
    # and a submit says the same
    result = hive_command(config, "submit", "add", "--payload", '{"a": 1, "b": 2}')
    assert result.returncode == EXIT_UNAVAILABLE  # Redis cannot be reached as configured
    assert "TLS certificate verification failed" in result.stderr and "Traceback" not in result.stderr, result.stderr


async def test_verification_is_on_by_default(tls_server: tuple[RedisProcess, dict[str, Path]]) -> None:
    # Given no CA file at all: the system's CAs do not know the test CA, so the server is not trusted
    server, _ = tls_server
    with pytest.raises(RedisUnavailable, match="TLS certificate verification failed"):
        async with Hive(Kernel(tls_config(server))):
            pass
