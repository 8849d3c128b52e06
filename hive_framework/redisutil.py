"""Small typed helpers for redis-py replies (and one of its quirks), shared by the engines, monitor and plugins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from redis.exceptions import ResponseError, WatchError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def awaited(value: Awaitable[T] | T) -> Awaitable[T]:
    """A redis-py command typed as awaitable: its stubs say ``Awaitable[T] | T``; on ``redis.asyncio`` it always is."""
    return cast("Awaitable[T]", value)


def another_type(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing a command because its key holds another type than it works on."""
    return isinstance(error, ResponseError) and str(error).startswith("WRONGTYPE")


def or_empty(reply: Any, empty: T, key: str) -> Any:
    """A pipeline reply (run with ``raise_on_error=False``), or ``empty`` when ``key`` holds another type than
    the hive keeps there (planted by hand, or left by a bug): a reader reads it as empty, with a warning, and the
    next save to the key replaces it. Other errors are raised."""
    if isinstance(reply, Exception):
        if not another_type(reply):
            raise reply
        logger.warning("%s holds another type than the hive keeps there: read as empty until a save replaces it",
                       key)
        return empty
    return reply


def command_keys(pipe: Any) -> list[str]:
    """The key each command queued on ``pipe`` works on, for messages (a script's keys, joined by ``, ``)."""
    names = []
    for args, options in pipe.command_stack:
        keys = options.get("keys")
        if not keys and str(args[0]).upper() in ("EVALSHA", "EVAL") and len(args) > 2:
            keys = args[3 : 3 + int(args[2])]
        if not keys:
            keys = args[1:2] or [args[0]]
        names.append(", ".join(text(k) for k in keys))
    return names


async def execute_or_empty(pipe: Any, empty: Any) -> list[Any]:
    """Run ``pipe`` and read each reply as :func:`or_empty` does, its warning naming the command's key."""
    names = command_keys(pipe)
    replies = await pipe.execute(raise_on_error=False)
    return [or_empty(reply, empty, name) for reply, name in zip(replies, names, strict=True)]


async def read_or_empty(read: Awaitable[T] | T, empty: T, key: str) -> T:
    """The reply of one read, or ``empty`` when ``key`` holds another type (see :func:`or_empty`)."""
    try:
        return await awaited(read)
    except ResponseError as exc:
        return cast("T", or_empty(exc, empty, key))


def text(value: Any) -> str:
    """One key, member or field read from Redis as ``str`` (``bytes`` decoded as UTF-8; bytes the hive never
    writes, planted by something else, read as U+FFFD rather than failing the loop that reads them)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def texts(values: Iterable[Any]) -> list[str]:
    """Members or keys read from Redis, as ``str``."""
    return [text(v) for v in values]


def fields(raw: Any) -> dict[str, str]:
    """A hash or stream entry's fields (a dict, or a flat ``[k, v, k, v...]`` list from Lua) as ``str -> str``."""
    if isinstance(raw, dict):
        return {text(k): text(v) for k, v in raw.items()}
    flat = list(raw or [])
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def glob_escape(value: str) -> str:
    """``value`` with Redis glob metacharacters escaped, for ``SCAN MATCH`` on a literal prefix."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop. redis-py can swallow a cancel (one that
    lands in the zero-second read of its connection check becomes that read's timeout), so a claim loop checks
    this each turn: else a stopping process claims on until it is killed."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError


async def start_over_on_watch_error(transaction: Callable[[], Awaitable[T]]) -> T:
    """Run a WATCH ... EXEC ``transaction`` (a fresh pipeline each call) until one pass stands.

    redis-py raises WatchError both when EXEC is refused (a watched key changed) and when the connection dies
    while watching, from any command after WATCH: either way the pass decided on a read that no longer counts,
    so the transaction reads again and decides again. A Redis still away fails the next WATCH with a
    ConnectionError, which propagates (the caller's outage handling), so this does not spin.
    """
    while True:
        raise_if_cancelling()
        try:
            return await transaction()
        except WatchError:
            continue
