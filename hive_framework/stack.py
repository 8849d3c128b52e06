"""StackManager: the seed's ``deploy_default_hive_stack()``, with a fallback for machines without containers.

With a container engine (a ``docker`` or ``podman`` CLI whose daemon answers) it runs ``compose up -d`` on
``deploy/compose.yaml``: Redis with AOF on a volume, a nexus with the Hive Monitor and the spores. Without
one it says so and, as the seed's troubleshooting recipe expects a Redis afterwards, starts a local
``redis-server`` with the same persistence (``--appendonly yes``) in a data folder it names, detached (it
outlives this process, as a container would). Starting it again on the same folder replays the AOF, so
tasks enqueued before a ``kill -9`` are there after.

``deploy_default_hive_stack()`` returns ``(success, message)`` and never raises for an environment problem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .config import HiveConfig
from .embedded import redis_answers

#: The compose file of a source checkout (``deploy/compose.yaml`` beside the package).
REPO_COMPOSE = Path(__file__).resolve().parent.parent / "deploy" / "compose.yaml"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def default_data_dir(config: HiveConfig) -> Path:
    """The fallback Redis's AOF folder: ``HIVE_STATE_DIR/redis``, else ``~/.local/state/hive-framework/redis``."""
    base = Path(config.state_dir).expanduser() if config.state_dir else Path.home() / ".local/state/hive-framework"
    return base / "redis"


class StackManager:
    """Brings the hive's stack up: containers when an engine is there, a local AOF Redis otherwise."""

    def __init__(
        self,
        config: HiveConfig | None = None,
        *,
        compose_file: str | Path | None = None,
        data_dir: str | Path | None = None,
        engines: Sequence[str] = ("docker", "podman"),
        start_timeout: float = 15.0,
    ) -> None:
        self.config = config or HiveConfig.load()
        env_file = os.environ.get("HIVE_COMPOSE_FILE")
        self.compose_file = Path(compose_file or env_file or REPO_COMPOSE)
        self.data_dir = Path(data_dir) if data_dir else default_data_dir(self.config)
        self.engines = tuple(engines)
        self.start_timeout = start_timeout

    # --- container engine ----------------------------------------------------------------------------

    def container_engine(self) -> str | None:
        """The first engine CLI on PATH whose daemon answers ``info``, or ``None``."""
        for name in self.engines:
            binary = shutil.which(name)
            if binary is None:
                continue
            try:
                done = subprocess.run([binary, "info"], capture_output=True, timeout=15, check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                return binary
        return None

    def _compose_up(self, engine: str) -> tuple[bool, str]:
        if not self.compose_file.is_file():
            return False, f"container engine {engine} found, but no compose file at {self.compose_file}"
        argv = [engine, "compose", "-f", str(self.compose_file), "up", "-d", "--wait"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{' '.join(argv)} failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return False, f"{' '.join(argv)} exited {done.returncode}: {' | '.join(tail)}"
        return True, f"hive stack is up with {engine} compose ({self.compose_file})"

    # --- local fallback ------------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis-server.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis-server.log"

    def local_pid(self) -> int | None:
        """The pid of the fallback redis-server this data folder belongs to, if it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start_local_redis(self) -> tuple[bool, str]:
        """Start ``redis-server --appendonly yes`` detached, its files in :attr:`data_dir`, on the configured port."""
        url = self.config.effective_redis_url()
        parts = urlsplit(url)
        if parts.scheme != "redis" or (parts.hostname or "") not in LOCAL_HOSTS:
            return False, f"the configured Redis {self.config.safe_redis_url()} is not on this machine; start it there"
        if redis_answers(url):
            return True, f"a Redis already answers at {self.config.safe_redis_url()}; nothing started"
        binary = shutil.which("redis-server")
        if binary is None:
            return False, "no redis-server on PATH: install Redis (apt-get install redis-server) or a container engine"
        port = parts.port or 6379
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "yes",
            "--pidfile", str(self.pid_file), "--logfile", str(self.log_file),
        ]
        if self.config.redis_password or parts.password:
            argv += ["--requirepass", parts.password or self.config.redis_password]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            said = done.stderr.strip() or done.stdout.strip()
            return False, f"redis-server did not start ({done.returncode}): {said}"
        deadline = time.monotonic() + self.start_timeout
        while not redis_answers(url, timeout=0.2):
            if time.monotonic() > deadline:
                return False, f"redis-server did not answer within {self.start_timeout:g}s; see {self.log_file}"
            time.sleep(0.05)
        return True, (
            f"started redis-server with AOF (appendonly yes) at {self.config.safe_redis_url()}, "
            f"data folder {self.data_dir}, pid {self.local_pid()}"
        )

    def stop_local_redis(self, timeout: float = 15.0) -> bool:
        """SIGTERM the fallback redis-server (it rewrites nothing and loses nothing); ``True`` if it stopped."""
        pid = self.local_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.local_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.local_pid() is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return True

    # --- the seed's API ------------------------------------------------------------------------------

    def deploy_default_hive_stack(self) -> tuple[bool, str]:
        """Bring the hive's stack up; ``(success, message)``, the message saying what was done and where."""
        engine = self.container_engine()
        if engine is not None:
            return self._compose_up(engine)
        ok, detail = self.start_local_redis()
        return ok, f"no container engine answers ({', '.join(self.engines)}): {detail}"
