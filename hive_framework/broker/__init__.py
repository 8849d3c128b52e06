"""The engine-neutral broker (:class:`MessageBroker`) and the interface its engines implement.

``hive_framework.broker.engine`` defines :class:`Engine`, :class:`Worker` and :class:`TaskRunner`; the
engines themselves live in ``hive_framework.engines`` (``streams``, ``arq``) or in third-party packages.
"""

from __future__ import annotations

from .attempts import AttemptRunner, Start, begin_attempt
from .base import MessageBroker
from .engine import Attempt, Delivery, Engine, Fence, Guard, Previous, TaskRunner, Worker
from .specs import TaskSpec

__all__ = [
    "Attempt",
    "AttemptRunner",
    "Delivery",
    "Engine",
    "Fence",
    "Guard",
    "MessageBroker",
    "Previous",
    "Start",
    "TaskRunner",
    "TaskSpec",
    "Worker",
    "begin_attempt",
]
