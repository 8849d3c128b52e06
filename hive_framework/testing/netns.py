"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge (iproute2, as root).

Each :class:`Host` is a namespace with its own loopback and one interface on a private /24; the bridge
lives in the machine's own namespace, which also has an address on the /24, so a test (and a
:class:`~hive_framework.testing.faultproxy.FaultProxy` it runs) reaches every host. Cutting a host off
is ``host.partition()`` (its veth set down), healing ``host.heal()``::

    with TestNet(hosts=["redis", "nexus", "gpu", "cpu"]) as net:
        redis_url = net["redis"].start_redis()
        spore = net["gpu"].popen(["python", "-m", "hive_framework", "spore", ...], env=...)
        net["gpu"].partition(); ...; net["gpu"].heal()

Everything is created by the test and deleted when the ``with`` block ends (namespaces, veths, bridge,
the processes started in the hosts). :func:`netns_problem` says why a machine cannot (not root, no
``ip``, namespaces refused); :func:`require_netns` turns that into a pytest skip, or a failure when
``HIVE_REQUIRE_NETNS=1`` (CI sets it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: The /24 the hosts get addresses on (the machine's own side is .1); one per TestNet, picked at random.
_SUBNET_BASE = "10.231"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(("-n", ns) if ns else ()), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def netns_problem() -> str | None:
    """Why test hosts cannot be made here, or ``None`` when they can (checked by making and deleting one)."""
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"hvchk{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
    return None


def require_netns() -> None:
    """Skip the calling test where test hosts cannot be made, unless ``HIVE_REQUIRE_NETNS=1`` (then fail)."""
    import pytest

    problem = netns_problem()
    if problem is None:
        return
    if os.environ.get("HIVE_REQUIRE_NETNS") == "1":
        pytest.fail(f"HIVE_REQUIRE_NETNS=1 but test hosts cannot be made: {problem}")
    pytest.skip(f"test hosts (network namespaces) unavailable: {problem}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Host:
    """One test host: a network namespace with one address on the test net."""

    def __init__(self, net: TestNet, name: str, index: int) -> None:
        self.net = net
        self.name = name
        self.ns = f"{net.tag}-{name}"[:40]
        self.address = f"{net.prefix}.{index}"
        self.outer = f"hv{net.tag[-5:]}o{index}"  # the bridge side (the machine's namespace)
        self.inner = "eth0"
        self.processes: list[subprocess.Popen[Any]] = []
        self.workdirs: list[str] = []

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", f"{self.outer}i")
        _ip("link", "set", f"{self.outer}i", "netns", self.ns)
        _ip("link", "set", f"{self.outer}i", "name", self.inner, ns=self.ns)
        _ip("addr", "add", f"{self.address}/24", "dev", self.inner, ns=self.ns)
        _ip("link", "set", self.inner, "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("link", "set", self.outer, "master", self.net.bridge)
        _ip("link", "set", self.outer, "up")

    def delete(self) -> None:
        # Last started, first stopped: what a process depends on (Redis, started first) outlives it, so a
        # stopping spore finishes its graceful stop instead of waiting out the SIGKILL timeout for a Redis gone.
        for proc in reversed(self.processes):
            stop_process(proc)
        for workdir in self.workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        _ip("link", "delete", self.outer, check=False)
        _ip("netns", "delete", self.ns, check=False)

    # --- running things in the host -------------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen[Any]:
        """Start a process in this host (stopped with the net); its output goes to ``log`` (else discarded)."""
        out: Any = subprocess.DEVNULL if log is None else log.open("ab")
        proc = subprocess.Popen(self.argv(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if log is not None:
            out.close()
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this host to its end."""
        return subprocess.run(self.argv(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def start_redis(self, port: int = 6379) -> str:
        """A private redis-server in this host (no persistence), listening on the host's address; its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        workdir = tempfile.mkdtemp(prefix=f"hive-netns-redis-{self.name}-")
        self.workdirs.append(workdir)
        self.popen([binary, "--bind", self.address, "--port", str(port), "--save", "", "--appendonly", "no",
                    "--dir", workdir, "--protected-mode", "no"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.run(["redis-cli", "-h", self.address, "-p", str(port), "ping"], timeout=5).stdout.strip() == "PONG":
                return f"redis://{self.address}:{port}/0"
            time.sleep(0.05)
        raise RuntimeError(f"redis-server in host {self.name} did not answer")

    # --- faults ---------------------------------------------------------------------------------------

    def partition(self) -> None:
        """Cut the host off the net (its veth down): open connections hang, new ones fail."""
        _ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        _ip("link", "set", self.outer, "up")


class TestNet:
    """Several hosts on one machine, joined by a bridge; a context manager that deletes all it made."""

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: Iterable[str]) -> None:
        self.tag = f"hv{uuid.uuid4().hex[:6]}"
        self.prefix = f"{_SUBNET_BASE}.{int(uuid.uuid4().hex[:4], 16) % 250 + 1}"
        self.bridge = f"{self.tag}br"
        self.gateway = f"{self.prefix}.1"
        self.hosts = {name: Host(self, name, i + 2) for i, name in enumerate(hosts)}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> TestNet:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts.values():
                host.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        # Hosts in reverse order too: the first one usually runs Redis.
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.delete()
        _ip("link", "delete", self.bridge, check=False)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM the process group (``ip netns exec`` and what it runs), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
