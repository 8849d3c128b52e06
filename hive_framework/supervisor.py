"""The local process supervisor: hive's own processes (``python -m hive_framework ...``) started from Python.

* :func:`hive_argv` / :func:`spawn_hive`: the one way to start a ``python -m hive_framework`` child;
* :func:`child_env`: the environment of such a child in one hive's settings, nothing inherited from the
  parent's ``HIVE_*``/``REDIS_*``;
* :func:`private_namespace`: a fresh key prefix (with its queues and broadcast channel) for a short-lived
  cluster that shares a Redis with others (``hive demo``, ``hive scan --local``);
* :class:`LocalCluster`: Redis (configured or embedded) plus spore and nexus subprocesses, for ``hive up``,
  ``hive demo`` and plugins that start spores of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from .config import HiveConfig, mask_url
from .embedded import EmbeddedRedis, resolve_redis

__all__ = ["LocalCluster", "PrivateNamespace", "child_env", "hive_argv", "private_namespace", "spawn_hive"]


def hive_argv(*args: str, log_level: str | None = None) -> list[str]:
    """The argv of ``python -m hive_framework [--log-level LEVEL] ARGS`` with this interpreter."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "hive_framework", *level, *args]


def spawn_hive(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
    cwd: str | Path | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m hive_framework [--log-level LEVEL] ARGS`` as a child process (not waited for)."""
    return subprocess.Popen(
        hive_argv(*args, log_level=log_level), env=None if env is None else dict(env), cwd=cwd,
        stdout=stdout, stderr=stderr,
    )


def child_env(
    config: HiveConfig | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    pythonpath: Sequence[str | Path] = (),
) -> dict[str, str]:
    """``os.environ`` without its ``HIVE_*``/``REDIS_*``, plus ``config``'s settings, ``extra`` and ``pythonpath``
    put first on ``PYTHONPATH``: a child runs in exactly the hive ``config`` describes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    if config is not None:
        env.update(config.to_env())
    env.update(extra or {})
    paths = [str(p) for p in pythonpath]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
    return env


@attrs.frozen
class PrivateNamespace:
    """A key prefix of its own, with the queue and broadcast names under it."""

    prefix: str

    @property
    def settings(self) -> dict[str, str]:
        """The :class:`HiveConfig` fields (``HiveConfig.load(**settings)``, ``config.evolve(**settings)``)."""
        return {
            "key_prefix": self.prefix,
            "high_priority_queue": f"{self.prefix}:high",
            "background_queue": f"{self.prefix}:background",
            "broadcast_channel": f"{self.prefix}:broadcast",
        }

    @property
    def env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes."""
        return {
            "HIVE_KEY_PREFIX": self.prefix,
            "HIVE_HIGH_PRIORITY_QUEUE": f"{self.prefix}:high",
            "HIVE_BACKGROUND_QUEUE": f"{self.prefix}:background",
            "HIVE_BROADCAST_CHANNEL": f"{self.prefix}:broadcast",
        }


def private_namespace(label: str) -> PrivateNamespace:
    """A fresh namespace ``{label}-{nanoseconds}``: nothing else on the Redis uses its keys."""
    return PrivateNamespace(f"{label}-{time.time_ns()}")


class LocalCluster:
    """Redis (configured or embedded) plus spore subprocesses, for ``hive up`` and the demo."""

    def __init__(
        self,
        config: HiveConfig,
        *,
        spores: int,
        concurrency: int | None = None,
        apps: tuple[str, ...] = (),
        embedded: str = "auto",
        extra_env: dict[str, str] | None = None,
        quiet: bool = False,
        nexus: bool = False,
        nexus_env: dict[str, str] | None = None,
    ) -> None:
        self.nexus = nexus
        self.nexus_env = nexus_env or {}
        self.config = config
        self.spores = spores
        self.concurrency = concurrency
        self.apps = apps
        self.embedded = embedded
        self.extra_env = extra_env or {}
        self.quiet = quiet
        self.url = ""
        self.server: EmbeddedRedis | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def redis_description(self) -> str:
        if self.server is not None:
            return str(self.server.description)
        return f"the configured Redis at {self.safe_url}"

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def __enter__(self) -> LocalCluster:
        self.url, self.server = resolve_redis(self.config, embedded=self.embedded)
        env = {**os.environ, **self.extra_env, "REDIS_URL": self.url}
        log_level = "warning" if self.quiet else "info"
        for index in range(self.spores):
            argv = ["spore", "--name", f"local-{index + 1}-{os.getpid()}"]
            if self.concurrency:
                argv += ["--concurrency", str(self.concurrency)]
            for app in self.apps:
                argv += ["--app", app]
            self.procs.append(spawn_hive(argv, env=env, log_level=log_level))
        if self.nexus:
            self.procs.append(spawn_hive(["nexus"], env={**env, **self.nexus_env}, log_level=log_level))
        return self

    def wait(self) -> None:
        while any(p.poll() is None for p in self.procs) or not self.procs:
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None:
            self.server.stop()
