"""A private ``redis-server`` for tests that kill and restart Redis (persistence on, its own port and folder).

Started and stopped by pid; never the shared test Redis. Skips the test when no ``redis-server`` binary exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hive_framework.embedded import free_port, redis_answers


class PrivateRedis:
    """``redis-server --appendonly yes`` on a free port in ``folder``; ``kill()`` is kill -9, ``start()`` again
    restarts it on the same port and folder (so it replays its AOF)."""

    def __init__(
        self, folder: Path, *, appendonly: bool = True, password: str = "", extra: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary (needed to kill and restart a private Redis)")
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> float:
        """Start (or restart) the server; returns the monotonic time it first answered PING."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no",
                "--loglevel", "warning", "--logfile", str(self.folder / "redis.log"), *self.extra]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, timeout=0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: see {self.folder}/redis.log")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")
            time.sleep(0.01)
        return time.monotonic()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
