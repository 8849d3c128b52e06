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
from redis.exceptions import AuthenticationError

from .config import HiveConfig
from .connection import describe_error, sync_redis_client
from .errors import RedisAuthFailed, RedisUnavailable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 0.5, *, config: HiveConfig | None = None) -> bool:
    """True when a Redis at ``url`` answers PING within ``timeout`` seconds (with ``config``: the Redis the
    config names, with its TLS or Sentinel settings)."""
    return ping_error(url, timeout, config=config) is None


def ping_error(url: str, timeout: float = 0.5, *, config: HiveConfig | None = None) -> BaseException | None:
    """Why a Redis at ``url`` (or the one ``config`` names) does not answer PING within ``timeout`` seconds;
    ``None`` when it does."""
    if config is not None:
        client = sync_redis_client(config, connect_timeout=timeout, socket_timeout=timeout)
    elif "+cluster" in url.partition("://")[0]:  # no hive prefix to route by: any node of the cluster
        scheme, _, rest = url.partition("://")
        auth, _, hosts = rest.rpartition("@")
        first = hosts.split(",")[0].split("/")[0]
        plain = f"{scheme.replace('+cluster', '')}://{auth + '@' if auth else ''}{first}/0"
        client = redis.Redis.from_url(plain, socket_connect_timeout=timeout, socket_timeout=timeout)
    else:
        client = sync_redis_client(HiveConfig(redis_url=url), connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return exc
    finally:
        client.close()


def unreachable(exc: BaseException, safe_url: str) -> RedisUnavailable:
    """The one-line error for a failed connection: Redis refusing the credentials is not Redis being down."""
    if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
        return RedisAuthFailed(
            f"Redis refused the password (AUTH) at {safe_url}: {exc}; set the right one in REDIS_URL "
            "(redis://:PASSWORD@host:port/0) or REDIS_PASSWORD"
        )
    return RedisUnavailable(
        f"no Redis answers at {safe_url} ({describe_error(exc)}); start one, set REDIS_URL, or run 'hive up' "
        "for an embedded one"
    )


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
            # Its own session: Ctrl-C in the terminal reaches `hive up` and the spores, never this Redis,
            # which `hive up` stops last, once the spores have handed their tasks back.
            start_new_session=True,
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
        error = ping_error(url, config=config)
        if error is not None:
            raise unreachable(error, config.safe_redis_url())
        return url, None
    if embedded == "auto":
        error = ping_error(url, config=config)
        if error is None:
            return url, None
        if isinstance(unreachable(error, ""), RedisAuthFailed):
            # A Redis answers at the default address but wants a password: starting another beside it
            # would hide the mistake, so say so.
            raise unreachable(error, config.safe_redis_url())
    server = EmbeddedRedis(prefer="auto" if embedded in ("auto", "always") else embedded)
    server.start()
    return server.url, server
