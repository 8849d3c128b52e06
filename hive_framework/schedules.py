"""Periodic tasks: schedules fired once per tick, cluster-wide, by the leading nexus.

A schedule names a task type and when to run it: a cron expression (five fields, minute resolution, in UTC
or the schedule's ``tz``) or an interval (``every = "30s"``, ticks aligned to the epoch). They come from
``@task(schedule=...)`` in the apps the nexus loads and from ``[schedules.NAME]`` tables in ``hive.toml``.

The guarantee, precisely: **a tick never runs twice.** The leader claims a tick with one Lua script that
checks it still holds the leader lease and that the tick is newer than the last one claimed, then enqueues
the task under an id made of the schedule and the tick (``schedule:NAME:EPOCH``), which the broker refuses
to enqueue twice. A tick is **skipped** only (a) when no nexus leads through it and a later tick has come
by the time one does (missed ticks are coalesced: only the latest runs, late), or (b) when the leader dies in
the milliseconds between claiming a tick and enqueueing it. A schedule seen for the first time starts with
the next tick, never a past one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from . import wire
from .durations import parse_duration
from .errors import ConfigError, HiveError, InvalidTask
from .redisutil import raise_if_cancelling, read_or_empty, text


class Broker(Protocol):
    """What the scheduler uses of a :class:`~hive_framework.broker.MessageBroker` (this module sits below it)."""

    @property
    def redis(self) -> Any: ...

    @property
    def keys(self) -> Any: ...

    async def enqueue_task(self, *args: Any, **kwargs: Any) -> str: ...

logger = logging.getLogger(__name__)

#: Claims a tick: refused (-1) unless ARGV[3] holds the leader lease; 2 records a first sighting (no run);
#: 0 when the tick is not newer than the last claimed; 1 when it is now claimed and must be enqueued.
_CLAIM = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
local last = redis.call('HGET', KEYS[1], ARGV[1])
if not last then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 2 end
if tonumber(last) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def parse_every(value: str | float | int) -> float:
    """Seconds in an interval such as ``30s``, ``5m``, ``1.5h``, ``1d`` or a bare number of seconds (>= 1)."""
    return parse_duration(value, minimum=1.0, what="interval")


def check_cron(expression: str) -> str:
    """``expression`` if it is a valid five-field cron expression, else ValueError saying what is wrong."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ValueError(f"bad cron expression {expression!r}: it needs five fields (minute hour day month weekday)")
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return expression


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


@attrs.frozen(kw_only=True)
class Schedule:
    """One periodic task: its type, when it fires (``cron`` or ``every`` seconds) and what it is given."""

    name: str
    task_type: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    payload: dict[str, Any] = attrs.field(factory=dict)
    #: Options for the enqueue (priority, timeout, max_retries, requirements, wait_timeout).
    options: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule {self.name!r}: give exactly one of cron or every")
        if self.cron is not None:
            check_cron(self.cron)
        _zone(self.tz)

    @property
    def when(self) -> str:
        """How it is written, for listings: ``*/5 * * * *`` or ``every 30s``."""
        if self.cron is not None:
            return self.cron if self.tz == "UTC" else f"{self.cron} ({self.tz})"
        return f"every {self.every:g}s"

    def latest_tick(self, now: float) -> float:
        """The newest tick at or before ``now`` (Unix seconds)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        assert self.cron is not None
        moment = datetime.fromtimestamp(now, _zone(self.tz)) + timedelta(microseconds=1)
        return next(CronSim(self.cron, moment, reverse=True)).timestamp()

    def next_tick(self, now: float) -> float:
        """The first tick after ``now``."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        assert self.cron is not None
        return next(CronSim(self.cron, datetime.fromtimestamp(now, _zone(self.tz)))).timestamp()

    def task_id(self, tick: float) -> str:
        """The id of this schedule's task for ``tick``: the same in every nexus, so a tick enqueues once."""
        return f"schedule:{self.name}:{tick:.0f}"

    def describe(self) -> dict[str, Any]:
        """A JSON-able row for ``hive schedules`` and the Monitor."""
        return {**wire.to_plain(self), "when": self.when}


_SCHEDULE_KEYS = {"task", "cron", "every", "tz", "payload", "priority", "timeout", "max_retries", "requires",
                  "wait_timeout"}
_OPTION_KEYS = {"priority": "priority", "timeout": "timeout", "max_retries": "max_retries",
                "requires": "requirements", "wait_timeout": "wait_timeout"}


def schedule_from_table(name: str, table: Mapping[str, Any]) -> Schedule:
    """A ``[schedules.NAME]`` table as a :class:`Schedule`; a ConfigError names the key that is wrong."""
    where = f"[schedules.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - _SCHEDULE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(_SCHEDULE_KEYS))}")
    task_type = table.get("task")
    if not isinstance(task_type, str) or not task_type:
        raise ConfigError(f"{where} needs task = \"TYPE\" (the task type to run)")
    payload = table.get("payload", {})
    if not isinstance(payload, dict):
        raise ConfigError(f"{where}: payload must be a table")
    try:
        every = parse_every(table["every"]) if "every" in table else None
        return Schedule(name=name, task_type=task_type, cron=table.get("cron"), every=every,
                        tz=table.get("tz", "UTC"), payload=payload,
                        options={_OPTION_KEYS[k]: v for k, v in table.items() if k in _OPTION_KEYS})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def collect_schedules(task_types: Iterable[Any], tables: Mapping[str, Mapping[str, Any]]) -> list[Schedule]:
    """Schedules declared by task types (``@task(schedule=...)``, named after the type) and by config tables."""
    found: dict[str, Schedule] = {}
    for task_type in task_types:
        if getattr(task_type, "schedule", None):
            found[task_type.name] = schedule_for_type(task_type.name, task_type.schedule)
    for name, table in tables.items():
        if name in found:
            raise ConfigError(f"[schedules.{name}] has the name of task type {name!r}'s own schedule; rename it")
        found[name] = schedule_from_table(name, table)
    return sorted(found.values(), key=lambda s: s.name)


def schedule_for_type(name: str, when: str) -> Schedule:
    """The schedule ``@task(schedule=WHEN)`` declares: ``every ...`` is an interval, anything else cron."""
    if when.strip().lower().startswith("every "):
        return Schedule(name=name, task_type=name, every=parse_every(when.strip()[6:]))
    return Schedule(name=name, task_type=name, cron=when)


class Scheduler:
    """Fires each schedule's ticks while this nexus holds the leader lease (see the module's guarantee).

    ``clock`` returns Unix seconds; tests pass their own to step through ticks without waiting.
    """

    def __init__(self, broker: Broker, schedules: Iterable[Schedule], *, identity: str,
                 clock: Callable[[], float] = time.time, interval: float = 0.5) -> None:
        self.broker = broker
        self.schedules = list(schedules)
        self.identity = identity
        self.clock = clock
        self.interval = interval
        self.fired = 0
        self._claim: Any = None  # registered on first use: the broker connects after this is built

    async def publish(self) -> None:
        """Write the schedule table where ``hive schedules`` and the Monitor read it (replacing the old one)."""
        keys = self.broker.keys
        async with self.broker.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.schedule_defs)
            if self.schedules:
                pipe.hset(keys.schedule_defs, mapping={s.name: wire.dumps(s) for s in self.schedules})
            await pipe.execute()

    async def tick(self) -> list[str]:
        """Claim and enqueue every schedule's latest tick not yet run; the ids of the tasks enqueued."""
        now = self.clock()
        keys = self.broker.keys
        if self._claim is None:
            self._claim = self.broker.redis.register_script(_CLAIM)
        enqueued: list[str] = []
        for schedule in self.schedules:
            tick = schedule.latest_tick(now)
            claimed = await self._claim(keys=[keys.schedule_ticks, keys.nexus_leader],
                                        args=[schedule.name, f"{tick:.0f}", self.identity])
            if claimed == -1:
                break  # not (or no longer) the leader: the next holder fires these
            if claimed != 1:
                continue
            task_id = schedule.task_id(tick)
            try:
                await self.broker.enqueue_task(schedule.task_type, dict(schedule.payload), task_id=task_id,
                                               allow_unknown=True, **schedule.options)
            except InvalidTask as exc:
                if "already exists" in str(exc):
                    continue  # a previous leader enqueued this tick before it died
                logger.error("schedule %s: tick %s not enqueued: %s", schedule.name, task_id, exc)
                continue
            except HiveError as exc:
                logger.error("schedule %s: tick %s not enqueued: %s", schedule.name, task_id, exc)
                continue
            await self.broker.redis.hset(keys.schedule_ticks, f"{schedule.name}:task", task_id)
            self.fired += 1
            enqueued.append(task_id)
            logger.info("schedule %s fired %s", schedule.name, task_id)
        return enqueued

    async def run(self, is_leader: Callable[[], bool]) -> None:
        """Publish the schedules, then fire due ticks every ``interval`` seconds while ``is_leader()``.

        A failing pass (Redis away) is logged once when the failures begin and once when they end; the
        watchdog's lease decides who leads meanwhile, so nothing here is ever fatal.
        """
        published = False
        failing = False
        while True:
            raise_if_cancelling()
            try:
                if not published:
                    await self.publish()
                    published = True
                if is_leader():
                    await self.tick()
                if failing:
                    logger.info("scheduler passes work again")
                    failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("scheduler pass failed (retried every %gs): %s", self.interval, exc)
                    failing = True
            await asyncio.sleep(self.interval)


async def schedule_rows(broker: Broker, now: float | None = None) -> list[dict[str, Any]]:
    """The published schedules with their last tick, last task id and next tick, for listings."""
    keys = broker.keys
    defs = await read_or_empty(broker.redis.hgetall(keys.schedule_defs), {}, keys.schedule_defs)
    last = await read_or_empty(broker.redis.hgetall(keys.schedule_ticks), {}, keys.schedule_ticks)
    ticks = {text(k): text(v) for k, v in last.items()}
    now = time.time() if now is None else now
    rows = []
    for raw in defs.values():
        try:
            schedule = wire.loads(raw, Schedule)
        except HiveError as exc:  # written by a newer or older nexus: shown, not fatal
            logger.warning("unreadable schedule definition: %s", exc)
            continue
        last = ticks.get(schedule.name)
        rows.append({**schedule.describe(), "last_tick": float(last) if last is not None else None,
                     "last_task_id": ticks.get(f"{schedule.name}:task"), "next_tick": schedule.next_tick(now)})
    return sorted(rows, key=lambda r: r["name"])
