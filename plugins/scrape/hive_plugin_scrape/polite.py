"""Politeness per host: when the next request to a host may start, shared by every spore through Redis.

Each host has one schedule: the earliest moment its next request may start. Taking a turn is one atomic step
(a Lua script on the hive's Redis, timed by Redis's own clock so spores on machines with skewed clocks agree):
the caller's start is ``max(now, next)``, ``next`` moves to that start plus ``politeness_delay``, and the
caller is told how long to wait. It is the "virtual scheduling" form of a token bucket with a burst of one
(GCRA): callers queue in the order they asked, nobody polls, and one Redis round trip per request.

A server's ``Retry-After`` (on 429 or 503) pushes the host's ``next`` to that moment, capped, so every spore
leaves the host alone until then, not only the one that was told.

:class:`LocalPoliteness` is the same schedule inside one process, for :func:`~.fetch.fetch` called without a
hive (tests, scripts).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from redis.asyncio import Redis

# KEYS[1] the host's schedule key; ARGV[1] the spacing in ms. Returns the ms to wait before starting.
_TAKE_TURN = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local start = math.max(now, nxt)
local spacing = tonumber(ARGV[1])
if start + spacing > now then
  redis.call('SET', KEYS[1], start + spacing, 'PX', start + spacing - now + 1000)
end
return start - now
"""

# KEYS[1] the host's schedule key; ARGV[1] ms from now before which nobody may start.
_HOLD_OFF = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local later = now + tonumber(ARGV[1])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if later > nxt then
  redis.call('SET', KEYS[1], later, 'PX', later - now + 1000)
end
return later - now
"""


class Politeness(Protocol):
    """Where a host's request schedule is kept."""

    async def take_turn(self, host: str, spacing: float) -> float:
        """Reserve the host's next start; the seconds to wait until it (0 when it is now)."""
        ...

    async def hold_off(self, host: str, seconds: float) -> None:
        """Let nobody start a request to ``host`` for ``seconds`` (a server's ``Retry-After``)."""
        ...


class RedisPoliteness:
    """The schedule in the hive's Redis under ``{prefix}:host:{host}``: shared by every spore of the hive."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, host: str) -> str:
        return f"{self.prefix}:host:{host.lower()}"

    async def take_turn(self, host: str, spacing: float) -> float:
        call = self.redis.eval(_TAKE_TURN, 1, self.key(host), str(max(int(spacing * 1000), 0)))
        wait_ms: Any = await cast("Awaitable[Any]", call)  # redis-py types eval as sync-or-async
        return max(int(wait_ms), 0) / 1000

    async def hold_off(self, host: str, seconds: float) -> None:
        await cast("Awaitable[Any]", self.redis.eval(_HOLD_OFF, 1, self.key(host), str(max(int(seconds * 1000), 0))))


class LocalPoliteness:
    """The same schedule in this process only (monotonic clock)."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    async def take_turn(self, host: str, spacing: float) -> float:
        now = time.monotonic()
        start = max(now, self._next.get(host.lower(), 0.0))
        self._next[host.lower()] = start + spacing
        return start - now

    async def hold_off(self, host: str, seconds: float) -> None:
        later = time.monotonic() + seconds
        self._next[host.lower()] = max(self._next.get(host.lower(), 0.0), later)


_LOCAL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalPoliteness] = weakref.WeakKeyDictionary()


def local_politeness() -> LocalPoliteness:
    """This event loop's in-process schedule."""
    return _LOCAL.setdefault(asyncio.get_running_loop(), LocalPoliteness())
