"""Pytest fixtures and helpers for testing hive itself and hive plugins.

Use them from a plugin's tests with ``pytest_plugins = ["hive_framework.testing"]``. Every test gets its
own key prefix, queue names and broadcast channel on the shared Redis, and its keys are deleted after
it: nothing is ever flushed.

Redis comes from ``HIVE_TEST_REDIS_URL`` (else ``REDIS_URL``, else ``redis://127.0.0.1:6379/0``). When
none answers, tests that need it are skipped with the reason, unless ``HIVE_REQUIRE_REDIS=1`` (CI), where
they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest

from ..config import HiveConfig
from ..connection import sync_redis_client
from ..embedded import redis_answers
from ..hive import Hive
from ..kernel import Kernel
from ..redisutil import glob_escape
from ..spore import Spore
from ..supervisor import PrivateNamespace
from ..supervisor import child_env as child_env  # re-exported: for tests that start hive processes themselves
from ..supervisor import hive_argv as hive_argv
from ..supervisor import spawn_hive as spawn_hive

T = TypeVar("T")

DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/0"


def test_redis_url() -> str:
    return os.environ.get("HIVE_TEST_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_TEST_REDIS


def require_redis() -> bool:
    return os.environ.get("HIVE_REQUIRE_REDIS", "").lower() in {"1", "true", "yes"}


def _test_prefix(redis_url: str) -> str:
    """A fresh test prefix; on a Redis Cluster a hash tag (``{hivetest:...}``), so the hive is in one slot."""
    name = f"hivetest:{uuid.uuid4().hex[:12]}"
    return f"{{{name}}}" if "+cluster" in redis_url.partition("://")[0] else name


def fast_config(redis_url: str, **overrides: Any) -> HiveConfig:
    """Settings for tests: a unique namespace on the given Redis and short timings."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        **PrivateNamespace(_test_prefix(redis_url)).settings,
        "poll_interval": 0.01,
        "heartbeat_interval": 0.3,
        "lease_seconds": 2.0,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.5,
        "shutdown_grace": 5.0,
        "task_timeout": 30.0,
        "monitor": False,  # a test nexus serves no dashboard unless the test asks (monitor=True, monitor_port=...)
    }
    if os.environ.get("HIVE_TEST_BROKER"):
        values["broker"] = os.environ["HIVE_TEST_BROKER"]
    values.update(overrides)
    return HiveConfig.load(environ={}, env_file=os.devnull, toml_file=None, **values)


def delete_namespace(redis_url: str, config: HiveConfig) -> None:
    """Delete every key of one test namespace (never FLUSH: the server may be shared)."""
    client = sync_redis_client(config.evolve(redis_url=redis_url))
    try:
        keys = list(client.scan_iter(match=f"{config.key_prefix}:*", count=1000))
        for queue in (config.high_priority_queue, config.background_queue):
            # every level's and task type's queue is named after its class's queue
            keys += [queue, *client.scan_iter(match=f"{glob_escape(queue)}:*", count=1000)]
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """The async twin of :func:`wait_until`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def hive_cli(*commands: click.Command) -> click.Group:
    """The ``hive`` root command group, with ``commands`` (a plugin's) added: for ``CliRunner`` tests."""
    from ..cli import cli

    for command in commands:
        cli.add_command(command)
    return cli


class HiveProcess:
    """A ``python -m hive_framework ...`` process with the settings of ``config``, logging to a file."""

    kind = "hive"

    def __init__(self, config: HiveConfig, name: str, argv: list[str], *, apps: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 log_dir: Path | None = None) -> None:
        self.name = name
        env = child_env(config, {"HIVE_APP": ",".join((*config.apps, *apps)), **(extra_env or {})},
                        pythonpath=[os.getcwd()])
        folder = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = folder / f"{self.kind}-{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = spawn_hive(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()


class SporeProcess(HiveProcess):
    """A spore running as a real OS process (``python -m hive_framework spore``)."""

    kind = "spore"

    def __init__(self, config: HiveConfig, name: str, *, apps: tuple[str, ...] = (), concurrency: int = 4,
                 extra_env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 log_dir: Path | None = None, args: tuple[str, ...] = ()) -> None:
        argv = ["spore", "--name", name, "--concurrency", str(concurrency), *args]
        # tests/test_redis_acl.py runs the suite with spores logged in as the spore user
        spore_url = os.environ.get("HIVE_TEST_SPORE_REDIS_URL")
        if spore_url and config.redis_url == test_redis_url():
            config = config.evolve(redis_url=spore_url)
        super().__init__(config, name, argv, apps=apps, extra_env=extra_env, cwd=cwd, log_dir=log_dir)


class NexusProcess(HiveProcess):
    """A nexus (Foreman + watchdog) running as a real OS process (``python -m hive_framework nexus``)."""

    kind = "nexus"

    def __init__(self, config: HiveConfig, name: str = "nexus", *, apps: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        super().__init__(config, name, ["nexus"], apps=apps, extra_env=extra_env, log_dir=log_dir)


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hive_redis_url() -> str:
    """URL of a Redis that answers; skips (or fails under ``HIVE_REQUIRE_REDIS=1``) when there is none."""
    url = test_redis_url()
    if not redis_answers(url, timeout=1.0):
        message = f"no Redis answers at {url} (set HIVE_TEST_REDIS_URL)"
        if require_redis():
            pytest.fail(f"HIVE_REQUIRE_REDIS=1 but {message}")
        pytest.skip(message)
    return url


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """Fast settings in a private namespace of the test Redis; the namespace is deleted afterwards."""
    config = fast_config(hive_redis_url)
    yield config
    delete_namespace(hive_redis_url, config)


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config)


@pytest.fixture
async def hive(hive_kernel: Kernel) -> AsyncIterator[Hive]:
    """A connected :class:`Hive` client in the test namespace."""
    client = Hive(hive_kernel)
    await client.open()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def run_spore(hive_kernel: Kernel) -> AsyncIterator[Callable[..., Awaitable[Spore]]]:
    """Start in-process spores: ``spore = await run_spore(name="a", concurrency=2)``; stopped after the test."""
    started: list[tuple[Spore, asyncio.Task[None]]] = []

    async def start(kernel: Kernel | None = None, **options: Any) -> Spore:
        node = Spore(kernel or hive_kernel, **options)
        runner = asyncio.create_task(node.run(install_signals=False))
        waiter = asyncio.create_task(node.wait_ready())
        await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            waiter.cancel()
            runner.result()
        started.append((node, runner))
        return node

    yield start
    for node, _ in started:
        node.request_stop()
    for _, runner in started:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 30)


P = TypeVar("P", bound=HiveProcess)


@contextlib.contextmanager
def _launcher(make: Callable[..., P]) -> Iterator[Callable[..., P]]:
    """A ``start(...)`` that builds processes with ``make`` and stops whichever still run at the end."""
    started: list[P] = []

    def start(*args: Any, **options: Any) -> P:
        proc = make(*args, **options)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.proc.poll() is None:
                proc.stop()


@pytest.fixture
def spore_processes(hive_config: HiveConfig, tmp_path: Path) -> Iterator[Callable[..., SporeProcess]]:
    """Start spores as OS processes: ``spore_processes("a", apps=("tests.apps.basic",))``; stopped after."""
    with _launcher(lambda name, **o: SporeProcess(hive_config, name, **{"log_dir": tmp_path, **o})) as start:
        yield start


@pytest.fixture
def nexus_processes(hive_config: HiveConfig, tmp_path: Path) -> Iterator[Callable[..., NexusProcess]]:
    """Start nexus processes: ``nexus_processes("n1")``; stopped after."""
    with _launcher(lambda name="nexus", **o: NexusProcess(hive_config, name, **{"log_dir": tmp_path, **o})) as start:
        yield start
