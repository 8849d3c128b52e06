"""Riding out Redis going away: which errors mean "Redis is not there", back-off, one log line per change.

Every long-lived loop of a spore, a nexus or the Monitor reports to one :class:`RedisLink` per process:
``lost(exc)`` when a Redis call failed with an outage error, ``back()`` when one succeeded again. The link
logs ``lost Redis ...`` once when the outage begins and ``Redis back after N s`` once when it ends (not one
line per failed call), and gives each loop a capped, jittered back-off to wait between tries.

Authentication refused (a wrong password, an ACL change) is an outage too, but one that may never heal:
``fatal_reason()`` names it once it lasted longer than the configured limit, and the process then stops
with a non-zero exit status so its supervisor sees it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import AuthenticationError, AuthorizationError, ReadOnlyError, WatchError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redisutil import raise_if_cancelling

#: Errors that mean Redis cannot be reached or cannot serve now (not that a command was wrong).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes AuthenticationError and BusyLoadingError (a restart replaying its AOF)
    RedisTimeoutError,
    ReadOnlyError,  # a replica promoted or demoted under us
    ConnectionError,  # the builtin: resets, refused connections
    TimeoutError,
    OSError,
)

#: First and largest back-off between two tries, in seconds (each try waits a random time up to the bound).
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 2.0


async def try_twice(operation: Callable[[], Awaitable[object]], what: str, log: logging.Logger) -> None:
    """Run a clean-up call on the way out (leaving the cluster view, giving a lease back), once more if it
    fails; a second failure is logged, never raised, as the process is stopping anyway."""
    for attempt in (1, 2):
        try:
            await operation()
            return
        except Exception as exc:
            if attempt == 2:
                log.warning("could not %s: %r", what, exc)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is unreachable or not serving (so waiting and trying again is right)."""
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    if isinstance(exc, WatchError) and exc.__context__ is not None and exc.__context__ is not exc:
        # redis-py turns a connection lost during WATCH into a WatchError raised while handling it.
        return is_outage(exc.__context__)
    # redis-py raises ResponseError for -NOAUTH / -LOADING / -MASTERDOWN replies in some code paths.
    text = str(exc)
    return text.startswith(("NOAUTH", "LOADING", "MASTERDOWN", "WRONGPASS"))


def is_auth_refused(exc: BaseException) -> bool:
    return isinstance(exc, (AuthenticationError, AuthorizationError)) or str(exc).startswith(("NOAUTH", "WRONGPASS"))


class Backoff:
    """Capped exponential back-off with full jitter: try ``n`` waits a random time in ``[first/2, bound]``."""

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_CAP_S) -> None:
        self.first = first
        self.cap = cap
        self.tries = 0

    def next_delay(self) -> float:
        bound = min(self.cap, self.first * 2 ** min(self.tries, 30))
        self.tries += 1
        return random.uniform(min(self.first / 2, bound), bound)  # jitter, not security

    def reset(self) -> None:
        self.tries = 0


class RedisLink:
    """The state of one process's link to Redis, shared by all its loops."""

    def __init__(
        self, log: logging.Logger, *, auth_limit: float = 60.0, backoff_cap: float = BACKOFF_CAP_S
    ) -> None:
        self.log = log
        self.auth_limit = auth_limit
        self.backoff_cap = backoff_cap
        self.down_since: float | None = None
        self.auth_refused_since: float | None = None
        self.outages = 0
        #: Set while Redis answers; loops that must not run during an outage wait on it.
        self.up = asyncio.Event()
        self.up.set()

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def lost(self, exc: BaseException, where: str = "") -> None:
        """A Redis call failed with an outage error: log once per outage."""
        now = time.monotonic()
        if is_auth_refused(exc):
            if self.auth_refused_since is None:
                self.auth_refused_since = now
        else:
            self.auth_refused_since = None
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            self.up.clear()
            self.log.warning("lost Redis%s: %s; holding running tasks, taking none, retrying with back-off",
                             f" ({where})" if where else "", _describe(exc))

    def back(self) -> None:
        """A Redis call succeeded: log once when an outage ends."""
        if self.down_since is not None:
            self.log.warning("Redis back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
        self.auth_refused_since = None
        self.up.set()

    def fatal_reason(self) -> str | None:
        """A named condition that will not heal by waiting, once it lasted past its limit; else ``None``."""
        if self.auth_refused_since is not None and time.monotonic() - self.auth_refused_since > self.auth_limit:
            return f"Redis refused authentication for more than {self.auth_limit:g}s"
        return None

    def backoff(self) -> Backoff:
        return Backoff(cap=self.backoff_cap)

    async def wait_reachable(self, redis: Any, *, where: str = "") -> None:
        """Ping until Redis answers (reporting the outage), backing off between tries."""
        backoff = self.backoff()
        while True:
            raise_if_cancelling()
            try:
                await redis.ping()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.lost(exc, where)
                await asyncio.sleep(backoff.next_delay())
            else:
                self.back()
                return


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


__all__ = ["OUTAGE_ERRORS", "Backoff", "RedisLink", "is_auth_refused", "is_outage"]
