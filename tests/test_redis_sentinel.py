"""Sentinel failover and durable acknowledgement, against real servers on loopback.

1 primary + 1 replica + 3 sentinels; a nexus and two spore processes reach Redis only through
``redis+sentinel://``. Half way through the submissions the replica stalls (SIGSTOP, its link cut), 4
more batches are submitted, and the primary is killed with SIGKILL while the next is in flight; the
replica runs again and the sentinels promote it, behind by what it missed. The killed node is
started again empty as the new primary's replica (as its sentinel-rewritten config would say), never a
candidate for promotion itself (``replica-priority 0``). The test prints the time from
the kill to the first task completed on the new primary and, per setting of ``HIVE_REDIS_WAIT_REPLICAS``,
how many acknowledged tasks were lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from hive_framework.broker.specs import TaskSpec
from hive_framework.config import HiveConfig
from hive_framework.connection import NotDurable
from hive_framework.errors import RedisUnavailable
from hive_framework.hive import Hive
from hive_framework.kernel import Kernel
from hive_framework.keys import read_task
from hive_framework.models import TaskStatus
from hive_framework.testing import NexusProcess, SporeProcess, async_wait_until, fast_config, wait_until

from .redis_servers import RedisProcess

pytestmark = pytest.mark.redis

SERVICE = "hive"
DOWN_AFTER_MS = 1000
TASKS = int(os.environ.get("HIVE_SENTINEL_TASKS", "5000"))
BATCH = 50
#: Batches submitted while the replica is stalled, just before the primary is killed.
STALL_BATCHES = 4


class SentinelSet:
    """1 primary, 1 replica, 3 sentinels (quorum 2), all on loopback."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes = [RedisProcess(tmp, [], name="primary")]
        self.nodes[0].wait_listening()
        self.nodes.append(RedisProcess(tmp, ["--replicaof", "127.0.0.1", str(self.nodes[0].port)], name="replica"))
        self.nodes[1].wait_listening()
        self.sentinels = [
            RedisProcess(tmp, [
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.nodes[0].port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ], sentinel=True, name=f"sentinel{i}")
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.wait_listening()
        wait_until(self._ready, timeout=60, what="the replica in sync and known to every sentinel")

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{s.port}' for s in self.sentinels)}/{SERVICE}"

    def primary_port(self) -> int:
        client = redis.Redis(port=self.sentinels[0].port, socket_timeout=2)
        try:
            host_port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return int(host_port[1])

    def _ready(self) -> bool:
        try:
            replica = redis.Redis(port=self.nodes[1].port, socket_timeout=2)
            link = replica.info("replication").get("master_link_status") == "up"
            replica.close()
            for sentinel in self.sentinels:
                client = redis.Redis(port=sentinel.port, socket_timeout=2)
                known = client.sentinel_slaves(SERVICE)
                peers = client.sentinel_sentinels(SERVICE)
                client.close()
                if len(known) != 1 or len(peers) != 2:  # each sentinel knows the replica and the other two
                    return False
            return link
        except RedisError:
            return False

    def restart_as_empty(self, node: RedisProcess, primary_port: int) -> RedisProcess:
        """Start a killed node again on its port, empty, as the replica of the new primary, with
        ``replica-priority 0`` (what the sentinels' rewrite of its config would say, plus the priority).

        Started as a bare master instead, it stays one until the sentinels reconfigure it; on a loaded machine
        they can fail over a second time before that (the new primary slow to answer just after its promotion)
        and, reading no priority from a master's INFO, promote the empty node: every task is lost, a second
        fault that no WAIT setting of a one-replica set survives (see the README).
        """
        args = ["--replicaof", "127.0.0.1", str(primary_port), "--replica-priority", "0"]
        again = RedisProcess(self.tmp, args, port=node.port, name="restarted")
        again.wait_listening()
        self.nodes.append(again)
        return again

    def stop(self) -> None:
        for proc in (*self.sentinels, *self.nodes):
            proc.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path)
    try:
        yield servers
    finally:
        servers.stop()


def direct(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5)


async def run_failover(servers: SentinelSet, config: HiveConfig, tmp_path: Path) -> dict[str, float]:
    """Submit TASKS tasks, kill the primary half way; return the figures."""
    nexus = NexusProcess(config, "sentinel-nexus", log_dir=tmp_path)
    spores = [SporeProcess(config, f"sentinel-spore-{i}", concurrency=8, log_dir=tmp_path) for i in (1, 2)]
    acked: list[str] = []
    refused = 0
    killed_at = 0.0
    stall_left = -1
    replica = servers.nodes[1]
    restarted = False
    kill_times: list[float] = []
    #: How many tasks were acknowledged when the sentinels had promoted the replica (the rest came after).
    acked_before_failover = -1
    pids = {proc.name: proc.proc.pid for proc in spores}

    old = servers.nodes[0]
    try:
        async with Hive(Kernel(config)) as hive:
            async def all_up() -> bool:
                leader = await hive.broker.redis.exists(hive.kernel.keys.nexus_leader)
                return len(await hive.nodes()) == 2 and bool(leader)

            await async_wait_until(all_up, timeout=120, what="both spores' heartbeats and a leading nexus")
            # Until TASKS were acknowledged and at least a batch more after the promotion (within a deadline,
            # so a failover that never comes fails the assertions below instead of hanging)
            deadline = time.monotonic() + 600
            while (len(acked) < TASKS or acked_before_failover < 0 or len(acked) - acked_before_failover < BATCH) \
                    and time.monotonic() < deadline:
                if stall_left < 0 and len(acked) >= TASKS // 2:
                    # The replica falls behind (a stall, a network blip): stopped, and its link cut by the
                    # primary, so what the primary takes from now on reaches no replica
                    os.kill(replica.proc.pid, signal.SIGSTOP)
                    admin = direct(old.port)
                    admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
                    admin.close()
                    stall_left = STALL_BATCHES
                if not killed_at and stall_left == 0:
                    # SIGKILL from another thread a moment later, so it lands while a batch is in flight;
                    # then the replica runs again and the sentinels promote it
                    def kill() -> None:
                        old.kill()
                        kill_times.append(time.time())
                        os.kill(replica.proc.pid, signal.SIGCONT)

                    threading.Timer(0.005, kill).start()
                    killed_at = time.time() + 0.005
                promoted = servers.primary_port() if killed_at and not restarted else old.port
                if promoted != old.port:
                    # only once the sentinels promoted the replica: an empty node back on the old port
                    # before they noticed would be taken for the primary, and its emptiness replicated
                    servers.restart_as_empty(old, promoted)
                    restarted = True
                    acked_before_failover = len(acked)
                specs = [TaskSpec(task_type="echo", payload={"n": len(acked) + i}) for i in range(BATCH)]
                if stall_left > 0:
                    stall_left -= 1
                try:
                    acked += await hive.submit_many(specs)
                except (RedisError, RedisUnavailable, NotDurable, OSError):
                    refused += 1  # not acknowledged: the caller would retry (a new id each time here)
                    time.sleep(0.05)  # back-off between retries of a refused submit, not a wait for a state
        # Promoted at least once. The primary may be on the old port again by now: on a loaded machine the
        # sentinels can fail over a second time, to the restarted node once it replicates the new primary.
        assert restarted, "the sentinels did not fail over"
        new_port = servers.primary_port()
        client = direct(new_port)
        prefix = config.key_prefix
        try:
            def settled() -> bool:
                return not unfinished(client, prefix, acked)

            wait_until(settled, timeout=600, interval=0.5, what="every acknowledged task to finish")
            killed_at = kill_times[0]
            finished = completed_times(client, prefix, acked)
            first = min((t for t in finished.values() if t is not None and t >= killed_at), default=None)
            lost = sum(len(part) - int(client.exists(*(f"{prefix}:task:{t}" for t in part))) for part in chunks(acked))
            left = unfinished(client, prefix, acked)
            after = acked[acked_before_failover:] if acked_before_failover >= 0 else []
            completed_after = sum(finished[t] is not None for t in after)
        finally:
            client.close()
        # the same spore processes, never restarted, beat on the new primary
        async with Hive(Kernel(config)) as hive:
            beating = {n.node_name: n.pid for n in await hive.nodes()}
        same = [p.name for p in spores if p.proc.poll() is None and pids[p.name] == p.proc.pid == beating.get(p.name)]
        return {
            "acked": len(acked), "refused_batches": refused, "lost": lost, "unfinished": left,
            "first_completion_s": (first - killed_at) if first is not None else -1.0,
            "spores_same_process": len(same), "nexus_alive": float(nexus.proc.poll() is None),
            "acked_after_failover": len(after), "completed_after_failover": completed_after,
        }
    finally:
        for proc in (*spores, nexus):
            if proc.proc.poll() is None:
                proc.stop()


def chunks(ids: list[str], size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def completed_times(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, float | None]:
    """When each task completed (Unix time), from its record; ``None`` for one not completed or with no record
    (the completed index keeps only the newest ids, so the records are what says it)."""
    out: dict[str, float | None] = {}
    for part in chunks(ids):
        for task_id, raw in zip(part, client.mget([f"{prefix}:task:{t}" for t in part]), strict=True):
            message = read_task(task_id, raw) if raw is not None else None
            out[task_id] = None
            if message is not None and message.status == TaskStatus.COMPLETED and message.completed_at is not None:
                out[task_id] = message.completed_at.timestamp()
    return out


def unfinished(client: redis.Redis, prefix: str, acked: list[str]) -> int:
    """Acknowledged tasks that exist and are not completed yet (lost ones are counted apart)."""
    count = 0
    for part in chunks(acked):
        for task_id, raw in zip(part, client.mget([f"{prefix}:task:{t}" for t in part]), strict=True):
            count += raw is not None and read_task(task_id, raw).status != TaskStatus.COMPLETED
    return count


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["durable", "not-durable"])
async def test_failover_with_tasks_in_flight(sentinel_set: SentinelSet, tmp_path: Path, wait_replicas: int) -> None:
    config = fast_config(sentinel_set.url, apps=("tests.apps.basic",), redis_wait_replicas=wait_replicas,
                         redis_wait_timeout=1.0, watchdog_interval=0.5)
    figures = await run_failover(sentinel_set, config, tmp_path)
    print(f"\nsentinel failover, HIVE_REDIS_WAIT_REPLICAS={wait_replicas}: {figures['acked']} tasks acknowledged "
          f"({figures['refused_batches']} batches refused during the failover), {figures['lost']} acknowledged "
          f"tasks lost, {figures['unfinished']} not finished; first completion on the new primary "
          f"{figures['first_completion_s']:.2f} s after the kill (down-after-milliseconds {DOWN_AFTER_MS}); "
          f"spores that followed the failover in the same process {figures['spores_same_process']}/2, nexus "
          f"alive {bool(figures['nexus_alive'])}; {figures['completed_after_failover']} of "
          f"{figures['acked_after_failover']} tasks acknowledged after the failover completed")
    assert figures["first_completion_s"] >= 0, "no task completed on the new primary"
    # Both spores followed the failover without a restart (same pid, beating on the new primary), and so did
    # the nexus
    assert figures["spores_same_process"] == 2 and figures["nexus_alive"]
    assert figures["acked_after_failover"] >= BATCH
    assert figures["completed_after_failover"] == figures["acked_after_failover"]
    if wait_replicas:
        assert figures["lost"] == 0
    assert figures["unfinished"] == 0  # every acknowledged task that survived completed
