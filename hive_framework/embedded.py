"""The embedded default: a private Redis when none is configured or answering.

A real ``redis-server`` on a free port in a temp dir when the binary exists (fast, nothing kept), else a
fakeredis TCP server in this process (slow, nothing kept, for machines with only Python).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

import redis

from .config import HiveConfig
from .errors import RedisUnavailable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def wait_for_redis(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not redis_answers(url, timeout=0.2):
        if time.monotonic() > deadline:
            raise RedisUnavailable(f"Redis at {url} did not answer within {timeout}s")
        time.sleep(0.02)


class EmbeddedRedis:
    """A private Redis for one ``hive up``; ``kind`` says which one it is."""

    def __init__(self, *, prefer: str = "auto") -> None:
        self.prefer = prefer
        self.kind = ""
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        if self.kind == "redis-server":
            return f"a private redis-server at {self.url} (temporary; nothing is kept after it stops)"
        return (
            f"an in-process fakeredis server at {self.url} (no redis-server binary was used): this fallback "
            "is slow and keeps nothing; install Redis or set REDIS_URL for real work"
        )

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary and self.prefer in ("auto", "redis-server"):
            self._start_redis_server(binary)
        else:
            self._start_fakeredis()
        return self.url

    def _start_redis_server(self, binary: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="hive-redis-")
        port = free_port()
        self._proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._tmp.name, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.kind = "redis-server"
        self.url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_for_redis(self.url)
        except RedisUnavailable:
            self.stop()
            raise

    def _start_fakeredis(self) -> None:
        from fakeredis import TcpFakeServer

        port = free_port()
        TcpFakeServer.allow_reuse_address = True
        self._server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        self._thread = threading.Thread(target=self._server.serve_forever, name="hive-fakeredis", daemon=True)
        self._thread.start()
        self.kind = "fakeredis"
        self.url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(self.url)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def resolve_redis(config: HiveConfig, *, embedded: str = "auto") -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use: the configured one, else one answering at the default, else an embedded one.

    A configured Redis that does not answer is an error (never silently replaced).
    """
    url = config.effective_redis_url()
    if config.redis_is_configured() or embedded == "never":
        if not redis_answers(url):
            raise RedisUnavailable(f"no Redis answers at {config.safe_redis_url()}")
        return url, None
    if embedded == "auto" and redis_answers(url):
        return url, None
    server = EmbeddedRedis(prefer="auto" if embedded in ("auto", "always") else embedded)
    server.start()
    return server.url, server
