"""Every Redis key and channel of the engine-neutral core, built from config in this one place.

Each queueing engine keeps its own keys under :meth:`Keys.engine` (``{prefix}:<engine>:...``) and reads its
queues' names from here, so every key of a hive starts with its prefix (given queue names under it, as the
defaults are: ``venom:tasks:high`` under ``venom``).
"""

from __future__ import annotations

import attrs

from . import wire
from .config import HiveConfig
from .models import TaskMessage, TaskStatus


@attrs.frozen
class Keys:
    """The Redis layout of one hive. Queues and the broadcast channel keep the seed's configured names."""

    prefix: str
    high_queue: str
    background_queue: str
    broadcast_channel: str

    @classmethod
    def from_config(cls, config: HiveConfig) -> Keys:
        return cls(
            prefix=config.key_prefix,
            high_queue=config.high_priority_queue,
            background_queue=config.background_queue,
            broadcast_channel=config.broadcast_channel,
        )

    @property
    def queues(self) -> tuple[str, str]:
        """Queues in the order spores serve them: high first."""
        return (self.high_queue, self.background_queue)

    def task(self, task_id: str) -> str:
        """JSON :class:`TaskMessage`."""
        return f"{self.prefix}:task:{task_id}"

    def progress(self, task_id: str) -> str:
        """JSON :class:`TaskProgress` a running task reported last (written apart from the record, so a progress
        write never races a status write)."""
        return f"{self.prefix}:progress:{task_id}"

    def status_index(self, status: TaskStatus | str) -> str:
        """Sorted set of task ids in one status, scored by the time they entered it (a final status keeps only
        the newest :data:`~hive_framework.broker.finished.RECENT_KEPT`; counts are in :meth:`finished`)."""
        return f"{self.prefix}:status:{status}"

    def finished(self, status: TaskStatus | str, width: int, start: int) -> str:
        """Counter of the tasks that reached the final ``status`` in the ``width``-second bucket from ``start``
        (Unix time): how many finished in a window, kept without one entry per task (:mod:`.broker.finished`)."""
        return f"{self.prefix}:finished:{status}:{width}:{start}"

    def done(self, task_id: str) -> str:
        """List that gets an element when the task reaches a final state; waiters block on it."""
        return f"{self.prefix}:done:{task_id}"

    def waiters(self, task_id: str) -> str:
        """Marker a waiter sets (with a TTL) before it reads the record: only a task with one gets a ``done`` list
        when it becomes final, so a finished task nobody waits for keeps nothing but its record."""
        return f"{self.prefix}:waiters:{task_id}"

    def cancelled(self, task_id: str) -> str:
        """Marker set when a task is cancelled, so a spore finishing it never overwrites the cancellation."""
        return f"{self.prefix}:cancelled:{task_id}"

    def waiting_on(self, task_id: str) -> str:
        """Set of dependencies a waiting task still waits for."""
        return f"{self.prefix}:deps:{task_id}"

    def dependents(self, task_id: str) -> str:
        """Set of tasks that wait for this one."""
        return f"{self.prefix}:dependents:{task_id}"

    def job_events(self, job_id: str) -> str:
        """Stream with one entry per task of a map-reduce job that became final (readers never poll tasks)."""
        return f"{self.prefix}:job:{job_id}:events"

    def job_info(self, job_id: str) -> str:
        """Hash describing a map-reduce job (task_type, tasks, items, description, created_at), for the monitor."""
        return f"{self.prefix}:job:{job_id}:info"

    @property
    def jobs(self) -> str:
        """Sorted set of map-reduce job ids, scored by when they were submitted."""
        return f"{self.prefix}:jobs"

    @property
    def ota_rollout(self) -> str:
        """Hash node_id -> that node's OTA update state (JSON object or plain text), written by the ota plugin."""
        return f"{self.prefix}:ota:nodes"

    def node(self, node_id: str) -> str:
        """JSON :class:`NodeInfo`, with a TTL a few heartbeats long."""
        return f"{self.prefix}:node:{node_id}"

    @property
    def nodes(self) -> str:
        """Set of node ids that have ever beaten; entries whose node key expired are offline."""
        return f"{self.prefix}:nodes"

    def reply(self, message_id: str) -> str:
        """List of :class:`BroadcastReply` for one broadcast."""
        return f"{self.prefix}:reply:{message_id}"

    @property
    def node_infos(self) -> str:
        """Hash node_id -> last :class:`NodeInfo` JSON (kept after the node key expires, to show it offline)."""
        return f"{self.prefix}:nodeinfo"

    @property
    def unrouted(self) -> str:
        """Sorted set of tasks waiting for a node that meets their requirements, scored by arrival."""
        return f"{self.prefix}:unrouted"

    @property
    def dead_letters(self) -> str:
        """Sorted set of tasks that failed for good (after their retries), scored by when."""
        return f"{self.prefix}:dead"

    @property
    def dead_records(self) -> str:
        """Hash of records that could not be decoded (poison), quarantined once each: "<key> <part>" -> JSON
        with the reason, the raw bytes (base64, size-capped) and when (see :mod:`hive_framework.broker.poison`)."""
        return f"{self.prefix}:dead:records"

    @property
    def dead_records_index(self) -> str:
        """Sorted set of the :attr:`dead_records` fields by when they were quarantined (for retention)."""
        return f"{self.prefix}:dead:records:at"

    @property
    def counters(self) -> str:
        """Hash of the cluster-wide task counters (:mod:`hive_framework.counters`) the Monitor's ``/metrics`` shows."""
        return f"{self.prefix}:counters"

    @property
    def counters_flushed(self) -> str:
        """Prefix of each spore process's mark of the last counter batch it added (``{this}:<process>``), so a
        batch sent again after a lost reply is added once."""
        return f"{self.prefix}:counters:flushed"

    @property
    def nexus_leader(self) -> str:
        """Lease held by the nexus whose watchdog acts (one at a time)."""
        return f"{self.prefix}:nexus:leader"

    def idempotency(self, key: str) -> str:
        """String: the id of the task a submit with idempotency key ``key`` made (expires with the window)."""
        return f"{self.prefix}:idem:{key}"

    @property
    def schedule_defs(self) -> str:
        """Hash: schedule name -> its JSON :class:`~hive_framework.schedules.Schedule`, as the leading nexus runs it."""
        return f"{self.prefix}:schedules:defs"

    @property
    def schedule_ticks(self) -> str:
        """Hash: schedule name -> the last tick claimed (Unix seconds); ``NAME:task`` -> that tick's task id."""
        return f"{self.prefix}:schedules:ticks"

    def rate(self, task_type: str) -> str:
        """The rate bucket of a rated task type: the GCRA arrival time in ms (hive_framework.limits)."""
        return f"{self.prefix}:rate:{task_type}"

    def engine(self, name: str) -> str:
        """Root of the keys one queueing engine owns (``{prefix}:streams``, ``{prefix}:arq``)."""
        return f"{self.prefix}:{name}"

    def node_queue(self, node_id: str) -> str:
        """Queue read only by one node (tasks assigned to it)."""
        return f"{self.prefix}:tasks:node:{node_id}"


def read_task(task_id: str, raw: bytes | str) -> TaskMessage:
    """The task stored under :meth:`Keys.task` ``(task_id)`` (a finished record leaves its id to the key); raises
    :class:`~hive_framework.errors.WireError` for a record that does not decode."""
    return wire.loads(raw, TaskMessage, known={"task_id": task_id})
