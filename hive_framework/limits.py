"""Per-type limits: a cluster-wide rate (a GCRA token bucket in Redis) and a per-spore concurrency cap.

Declared with ``@task(rate="100/m", burst=1, concurrency=2)`` or overridden per spore by a ``[limits.TYPE]``
table in ``hive.toml``. The rate is shared by every spore of the hive through one Redis key per type; the cap
counts the attempts of that type running on one spore. Engines' workers ask :class:`TypeLimits` what they may
take before they claim, so a spore holds no slot for a task it may not run yet.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Seconds per unit of a rate's period.
_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
#: Keys a ``[limits.TYPE]`` table may hold.
LIMIT_KEYS = ("rate", "burst", "concurrency")


@attrs.frozen
class Rate:
    """``count`` tasks per ``period`` seconds, spaced evenly (``burst`` of them may start back to back)."""

    count: float
    period: float
    burst: int = 1

    @classmethod
    def parse(cls, text: str, burst: int = 1) -> Rate:
        """``"100/m"``, ``"10/s"``, ``"5/h"``, ``"1/30s"``, ``"2.5/min"``; a ValueError names what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"a rate is text such as '100/m', got {text!r}")
        match = _RATE_RE.match(text.lower())
        if not match or match.group(3) not in _UNITS:
            raise ValueError(f"bad rate {text!r}: write COUNT/UNIT, e.g. '100/m', '10/s', '1/30s' "
                             f"(units: {', '.join(sorted(set(_UNITS)))})")
        count = float(match.group(1))
        period = float(match.group(2) or 1) * _UNITS[match.group(3)]
        if not (count > 0 and period > 0 and math.isfinite(count) and math.isfinite(period)):
            raise ValueError(f"bad rate {text!r}: the count and the period must be > 0")
        return cls(count=count, period=period, burst=check_burst(burst))

    @property
    def interval_ms(self) -> float:
        """Milliseconds between two tasks at this rate."""
        return self.period * 1000.0 / self.count

    def __str__(self) -> str:
        return f"{self.count:g}/{self.period:g}s"


@attrs.frozen
class TypeLimit:
    """The limits of one task type on this spore (``None``: no limit of that kind)."""

    rate: Rate | None = None
    concurrency: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.rate is None and self.concurrency is None


def check_burst(value: Any) -> int:
    """How many tasks of a rated type may start back to back: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"bad burst {value!r}: a whole number >= 1")
    return value


def check_concurrency(value: Any, where: str) -> int | None:
    """A per-spore cap: ``None`` or a whole number >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: concurrency must be a whole number >= 1, got {value!r}")
    return value


def limit_from_table(name: str, table: Mapping[str, Any], base: TypeLimit | None = None) -> TypeLimit:
    """A ``[limits.NAME]`` table over the type's declared limits; a ValueError names the bad key."""
    where = f"[limits.{name}]"
    unknown = sorted(set(table) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(LIMIT_KEYS)}")
    base = base or TypeLimit()
    rate = base.rate
    try:
        if "rate" in table:
            rate = Rate.parse(table["rate"], table.get("burst", rate.burst if rate else 1))
        elif "burst" in table:
            if rate is None:
                raise ValueError("burst without a rate")
            rate = attrs.evolve(rate, burst=check_burst(table["burst"]))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    concurrency = base.concurrency
    if "concurrency" in table:
        concurrency = check_concurrency(table["concurrency"], where)
    return TypeLimit(rate=rate, concurrency=concurrency)


# --- the bucket --------------------------------------------------------------------------------------------

#: Takes up to ARGV[1] tokens of the GCRA bucket at KEYS[1] (its theoretical arrival time, ms, on Redis's
#: clock): ARGV[2] ms between tokens, ARGV[3] the burst; ARGV[4] '1' charges all ARGV[1] even past the
#: bucket (the tasks were taken already: later takers wait longer), a negative ARGV[1] gives tokens back.
#: Returns {tokens taken, ms until the next token is free (0: free now)}.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local want = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local take = want
if ARGV[4] ~= '1' and want > 0 then
  take = math.floor((now + burst * interval - tat) / interval)
  if take > want then take = want end
  if take < 0 then take = 0 end
end
tat = tat + take * interval
if tat < now then tat = now end
if tat > now then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1)
else
  redis.call('DEL', KEYS[1])
end
local wait = tat - (burst - 1) * interval - now
if wait < 0 then wait = 0 end
return {take, math.ceil(wait)}
"""


class Buckets:
    """The hive's rate buckets, one Redis key per rated type (named by ``key``: ``Keys.rate``)."""

    def __init__(self, redis: Redis, key: Callable[[str], str]) -> None:
        self.key = key
        self._redis = redis
        self._script = redis.register_script(RATE_SCRIPT)

    async def take(self, task_type: str, rate: Rate, n: int, *, force: bool = False) -> tuple[int, float]:
        """Take up to ``n`` tokens (all ``n`` with ``force``; ``n < 0`` gives tokens back): (taken, ms to next)."""
        return (await self.take_many([(task_type, rate, n)], force=force))[0]

    async def take_many(self, wants: Sequence[tuple[str, Rate, int]], *,
                        force: bool = False) -> list[tuple[int, float]]:
        """:meth:`take` for several types in one round trip (a pipeline when there are more than one)."""
        calls: list[tuple[list[str], list[str]]] = [
            ([self.key(name)], [str(n), repr(rate.interval_ms), str(rate.burst), "1" if force else "0"])
            for name, rate, n in wants
        ]
        if len(calls) == 1:
            replies = [await self._script(keys=calls[0][0], args=calls[0][1])]
        else:
            # EVALSHA straight on the pipeline: a script object on a pipeline checks SCRIPT EXISTS first, a
            # round trip more on every call. A server that lost the script answers NOSCRIPT for that call only.
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    replies[i] = await self._script(keys=calls[i][0], args=calls[i][1])
                elif isinstance(reply, Exception):
                    raise reply
        return [(int(taken), float(wait)) for taken, wait in replies]


class TypeLimits:
    """What one spore may take of each type now: running attempts counted against caps, buckets remembered dry.

    Workers call :meth:`started`/:meth:`finished` around every attempt whose type they know, and ask
    :meth:`blocked` which types to leave unread. :meth:`slot` is the runner's backstop: an attempt of a capped
    type taken anyway (pinned to this spore, taken over from a lost one) waits there for its turn.
    """

    def __init__(self, limits: Mapping[str, TypeLimit], buckets: Buckets | None = None) -> None:
        self.limits = {name: limit for name, limit in limits.items() if not limit.is_empty}
        self.buckets = buckets
        self.running: Counter[str] = Counter()
        #: Types whose bucket was empty at the last look, with the loop time it has a token again.
        self.dry_until: dict[str, float] = {}
        self._slots = {name: asyncio.Semaphore(limit.concurrency)
                       for name, limit in self.limits.items() if limit.concurrency is not None}

    def __bool__(self) -> bool:
        return bool(self.limits)

    @property
    def rated(self) -> dict[str, Rate]:
        return {name: limit.rate for name, limit in self.limits.items() if limit.rate is not None}

    def room(self, task_type: str) -> int | None:
        """How many more of ``task_type`` this spore may start now under its cap (``None``: no cap)."""
        limit = self.limits.get(task_type)
        if limit is None or limit.concurrency is None:
            return None
        return max(limit.concurrency - self.running[task_type], 0)

    def started(self, task_type: str) -> None:
        self.running[task_type] += 1

    def finished(self, task_type: str) -> None:
        self.running[task_type] -= 1
        if self.running[task_type] <= 0:
            del self.running[task_type]

    def dry(self, task_type: str, wait_ms: float) -> None:
        """The bucket of ``task_type`` has no token for ``wait_ms``: leave its queues alone until then."""
        self.dry_until[task_type] = asyncio.get_running_loop().time() + wait_ms / 1000

    def blocked(self, types: Iterable[str]) -> set[str]:
        """The types of ``types`` this spore must not take now: at their cap, or with a dry bucket."""
        now = asyncio.get_running_loop().time()
        for name in [n for n, until in self.dry_until.items() if until <= now]:
            del self.dry_until[name]
        return {t for t in types if self.room(t) == 0 or t in self.dry_until}

    def next_token_in(self) -> float | None:
        """Seconds until the soonest dry bucket has a token (``None``: none is dry)."""
        if not self.dry_until:
            return None
        return max(min(self.dry_until.values()) - asyncio.get_running_loop().time(), 0.0)

    async def grant(self, types: Iterable[str], want: int) -> dict[str, int]:
        """Take tokens for the rated types of ``types`` (not dry), up to ``want`` each and their cap's room: how
        many tasks of each the caller may claim now. A type granted none is marked dry until its next token."""
        wants: list[tuple[str, Rate, int]] = []
        rated = self.rated
        for name in types:
            rate = rated.get(name)
            if rate is None or name in self.dry_until or self.buckets is None:
                continue
            room = self.room(name)
            n = want if room is None else min(want, room)
            if n > 0:
                wants.append((name, rate, n))
        if not wants or self.buckets is None:
            return {}
        granted: dict[str, int] = {}
        for (name, _, _), (taken, wait_ms) in zip(wants, await self.buckets.take_many(wants), strict=True):
            if not taken:
                self.dry(name, wait_ms)
            granted[name] = taken
        return granted

    async def give_back(self, unused: Mapping[str, int]) -> None:
        """Return tokens granted but not used (the queue had fewer tasks than tokens)."""
        rated = self.rated
        wants = [(name, rated[name], -n) for name, n in unused.items() if n > 0 and name in rated]
        if wants and self.buckets is not None:
            await self.buckets.take_many(wants)

    async def charge(self, taken: Mapping[str, int]) -> None:
        """Count tasks taken without tokens (a blocking read hands over what arrives) against their buckets:
        the bucket may go into debt, so later takers wait for it."""
        rated = self.rated
        wants = [(name, rated[name], n) for name, n in taken.items() if n > 0 and name in rated]
        if not wants or self.buckets is None:
            return
        for (name, _, _), (_, wait_ms) in zip(wants, await self.buckets.take_many(wants, force=True), strict=True):
            if wait_ms > 0:
                self.dry(name, wait_ms)

    def slot(self, task_type: str) -> asyncio.Semaphore | None:
        """The semaphore an attempt of a capped type runs under (``None``: the type has no cap)."""
        return self._slots.get(task_type)


def limits_of(task_types: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> dict[str, TypeLimit]:
    """Each served type's limits: its declaration (``TaskType.limit``) under its ``[limits.NAME]`` table."""
    out: dict[str, TypeLimit] = {}
    for name, task_type in task_types.items():
        base = getattr(task_type, "limit", None) or TypeLimit()
        out[name] = limit_from_table(name, tables[name], base) if name in tables else base
    return out
