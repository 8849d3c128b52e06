"""Default ``after_task``, ``on_retry`` and ``on_task_failure``: the task counters the Monitor's ``/metrics`` shows.

Each hook only updates a dict in the spore's memory (a :class:`~hive_framework.counters.Tally`); the spore
adds the counts to the cluster-wide hash about once a second and when it stops. One instance per kernel, so
two hives in one process never mix their counts.
"""

from __future__ import annotations

from ..counters import Tally, retries_field
from ..hookspecs import hookimpl
from ..models import TaskMessage, TaskStatus


class TaskCounters:
    """Counts finished tasks by status, retries by task type and run times; :attr:`tally` holds them until flushed."""

    def __init__(self) -> None:
        self.tally = Tally()

    @hookimpl
    def after_task(self, task: TaskMessage) -> None:
        # Cancelled: a cancellation won over the result, and was counted where it was made.
        if task.status is TaskStatus.COMPLETED:
            self.tally.count_final(task)

    @hookimpl
    def on_retry(self, task: TaskMessage) -> None:
        self.tally.add(retries_field(task.task_type))

    @hookimpl
    def on_task_failure(self, task: TaskMessage) -> None:
        if task.status is TaskStatus.FAILED:
            self.tally.count_final(task)
