"""The broker's cluster view: nodes and their heartbeats, queue statistics, dead letters and broadcasts."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio.client import PubSub

from .. import wire
from ..errors import InvalidTask, WireError
from ..models import BroadcastMessage, BroadcastReply, NodeInfo, TaskMessage, TaskStatus, utcnow
from ..redisutil import execute_or_empty, read_or_empty, text, texts
from .finished import finished_counts
from .poison import dead_records, digest, quarantine

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..config import HiveConfig
    from ..keys import Keys
    from .engine import Engine

logger = logging.getLogger(__name__)

#: How long a broadcast's replies are kept.
REPLY_TTL_S = 60


class ClusterMixin:
    """Part of :class:`~hive_framework.broker.MessageBroker`: what every process reads about the cluster."""

    if TYPE_CHECKING:
        config: HiveConfig
        keys: Keys
        engine: Engine

        @property
        def redis(self) -> Redis: ...

        async def get_tasks(self, task_ids: Sequence[str]) -> list[TaskMessage | None]: ...

    async def get_queue_stats(self) -> dict[str, int]:
        """Counts for the whole cluster. Queue lengths include jobs a spore has started but not finished; a final
        status counts the tasks that reached it within ``HIVE_RESULT_TTL`` (to within 1/120 of it)."""
        live = [status for status in TaskStatus if not status.is_terminal]
        async with self.redis.pipeline(transaction=False) as pipe:
            self.engine.depth_ops(pipe)
            for status in live:
                pipe.zcard(self.keys.status_index(status))
            results = await execute_or_empty(pipe, 0)
        depths = results[-(len(live) + 2) :]
        by_status = dict(zip(live, depths[2:], strict=True))
        by_status.update(await finished_counts(self.redis, self.keys, self.config.result_ttl))
        return {
            "high_priority_queue": depths[0],
            "background_queue": depths[1],
            "tasks_pending": by_status[TaskStatus.PENDING] + by_status[TaskStatus.RETRYING],
            "tasks_running": by_status[TaskStatus.RUNNING],
            "tasks_completed": by_status[TaskStatus.COMPLETED],
            "tasks_failed": by_status[TaskStatus.FAILED],
            "tasks_retrying": by_status[TaskStatus.RETRYING],
            "tasks_cancelled": by_status[TaskStatus.CANCELLED],
            "tasks_waiting": by_status[TaskStatus.WAITING],
            "tasks_scheduled": by_status[TaskStatus.SCHEDULED],
        }

    async def get_nodes(self, *, include_offline: bool = False) -> list[NodeInfo]:
        """Spores whose heartbeat has not expired, freshest first."""
        node_ids = sorted(texts(await read_or_empty(self.redis.smembers(self.keys.nodes), set(), self.keys.nodes)))
        if not node_ids:
            return []
        raws = await self.redis.mget([self.keys.node(n) for n in node_ids])
        nodes = []
        for node_id, raw in zip(node_ids, raws, strict=True):
            if raw is None:
                continue
            try:
                nodes.append(wire.loads(raw, NodeInfo))
            except WireError as exc:
                key = self.keys.node(node_id)
                await quarantine(self.redis, self.keys, key, raw, str(exc), [("DEL", key)])
        return sorted(nodes, key=lambda n: n.last_heartbeat, reverse=True)

    async def get_cluster_nodes(self) -> tuple[list[NodeInfo], list[NodeInfo]]:
        """(online, offline) nodes: offline ones are those whose heartbeat expired without a clean stop."""
        online = await self.get_nodes()
        ids = {n.node_id for n in online}
        offline = []
        infos = await read_or_empty(self.redis.hgetall(self.keys.node_infos), {}, self.keys.node_infos)
        for node_id, raw in infos.items():
            try:
                info = wire.loads(raw, NodeInfo)
            except WireError as exc:
                name = f"{self.keys.node_infos} {text(node_id)}"
                await quarantine(self.redis, self.keys, name, raw, str(exc), [("HDEL", self.keys.node_infos, node_id)])
                continue
            if info.node_id not in ids:
                offline.append(info)
        return online, sorted(offline, key=lambda n: n.last_heartbeat, reverse=True)

    async def _remote_task_types(self) -> set[str]:
        return {t for node in await self.get_nodes() for t in node.task_types}

    async def dead_letters(self, limit: int = 100) -> list[TaskMessage]:
        """Tasks that failed for good, newest first."""
        ids = texts(await read_or_empty(self.redis.zrevrange(self.keys.dead_letters, 0, limit - 1), [],
                                        self.keys.dead_letters))
        return [m for m in await self.get_tasks(ids) if m is not None]

    async def quarantined_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """Records that could not be decoded and were set aside (``{prefix}:dead:records``), newest first: each
        with the record's name, the reason, its size, the raw bytes (base64, capped) and when."""
        return await dead_records(self.redis, self.keys, limit)

    async def detect_zombie_tasks(self) -> list[TaskMessage]:
        """Running tasks whose spore is gone (no heartbeat) or that ran past ``HIVE_ZOMBIE_TASK_TIMEOUT``."""
        index = self.keys.status_index(TaskStatus.RUNNING)
        running = texts(await read_or_empty(self.redis.zrange(index, 0, -1), [], index))
        if not running:
            return []
        online = {n.node_id for n in await self.get_nodes()}
        now = utcnow()
        zombies = []
        for message in await self.get_tasks(running):
            if message is None or message.status != TaskStatus.RUNNING:
                continue
            too_long = (
                message.started_at is not None
                and (now - message.started_at).total_seconds() > self.config.zombie_task_timeout
            )
            orphaned = message.assigned_node is not None and message.assigned_node not in online
            if too_long or orphaned:
                zombies.append(message)
        return zombies

    # --- broadcast -------------------------------------------------------------------------------------

    async def broadcast_control(
        self, command: str, data: dict[str, Any] | None = None, target_nodes: Sequence[str] | None = None
    ) -> str:
        """Publish a control command to every spore (or only ``target_nodes``); returns the message id."""
        if not isinstance(command, str) or not command.strip():
            raise InvalidTask(f"a broadcast command must be a non-empty string, got {command!r}")
        message = BroadcastMessage(
            command=command.strip(),
            data=dict(data or {}),
            message_id=uuid.uuid4().hex,
            sender=f"pid:{os.getpid()}",
            target_nodes=list(target_nodes or []),
        )
        await self.redis.publish(self.keys.broadcast_channel, wire.dumps(message))
        return message.message_id

    async def subscribe_broadcast(self) -> PubSub:
        """A redis-py PubSub subscribed to the broadcast channel (``async for m in pubsub.listen()``)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.broadcast_channel)
        return pubsub

    async def send_reply(self, reply: BroadcastReply) -> None:
        key = self.keys.reply(reply.message_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, wire.dumps(reply))
            pipe.expire(key, REPLY_TTL_S)
            await pipe.execute()

    async def collect_replies(self, message_id: str, *, expected: int, timeout: float) -> list[BroadcastReply]:
        """Wait up to ``timeout`` for ``expected`` spores to answer a broadcast; returns what arrived."""
        deadline = time.monotonic() + timeout
        key = self.keys.reply(message_id)
        replies: list[BroadcastReply] = []
        while len(replies) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # BLPOP with a fractional timeout (Redis 6+ takes one; redis-py's stubs say int).
            popped = await self.redis.execute_command("BLPOP", key, min(max(remaining, 0.01), 5.0))
            if popped is None:
                continue
            try:
                replies.append(wire.loads(popped[1], BroadcastReply))
            except WireError as exc:
                await quarantine(self.redis, self.keys, f"{key} {digest(popped[1])}", popped[1], str(exc))
        return replies
