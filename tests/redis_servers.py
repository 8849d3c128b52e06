"""Private ``redis-server`` / ``redis-sentinel`` processes for the production-Redis tests (TLS, ACL, Sentinel).

Each server runs on a free loopback port in its own temp dir and is stopped by its pid; a throw-away CA
is made with ``openssl``. Nothing here touches the shared test Redis.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hive_framework.embedded import free_port


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install redis-server redis-sentinel openssl)")
    return path


class RedisProcess:
    """One ``redis-server`` (or sentinel) started with ``args``; ``stop()`` ends it by pid."""

    def __init__(self, directory: Path, args: Sequence[str], *, port: int | None = None, sentinel: bool = False,
                 name: str = "redis", tls_only: bool = False) -> None:
        self.port = port or free_port()
        self.dir = directory / f"{name}-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        argv = [need("redis-server")]
        if sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("".join(f"{line}\n" for line in args))
            argv += [str(conf), "--sentinel", "--port", str(self.port)]
        elif tls_only:  # ``self.port`` is the TLS port; the plain one is off
            argv += ["--port", "0", "--tls-port", str(self.port), *args]
        else:
            argv += ["--port", str(self.port), *args]
        argv += ["--bind", "127.0.0.1", "--dir", str(self.dir), "--logfile", str(self.log_path), "--daemonize", "no"]
        if not sentinel:
            argv += ["--save", ""]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait_listening(self, port: int | None = None, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port or self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis on port {port or self.port} did not start: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, no goodbye to replicas)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_ca(directory: Path, name: str = "ca") -> dict[str, Path]:
    """A throw-away CA with a server certificate (127.0.0.1, localhost) and a client certificate signed by it."""
    openssl = need("openssl")
    d = directory / name
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=hive-test-{name}",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.crt")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key", "-out",
            f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{who}.crt")
    return {k: d / f for k, f in {
        "ca": "ca.crt", "server_cert": "server.crt", "server_key": "server.key",
        "client_cert": "client.crt", "client_key": "client.key",
    }.items()}


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")
