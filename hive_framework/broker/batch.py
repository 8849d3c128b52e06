"""Run the commands queued on a transaction pipeline as one script call: the same all-at-once effect as MULTI/EXEC,
in one command and one reply instead of a reply per command (redis-py reads each reply under its own timeout,
which makes a MULTI block of many small commands cost the client more CPU than Redis spends on it).

Used where nobody reads the replies (storing and dispatching new tasks). A script queued whole (``EVAL``) in the
block becomes a function of the batch script; anything else the batch cannot express runs as the MULTI block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

#: The loop of the batch script: ARGV holds each command as its argument count then its arguments; a command
#: named ``@N`` calls sub-script N (its arguments: the key count, the keys, the other arguments).
_LOOP = """
local i, n = 1, #ARGV
while i <= n do
  local argc = tonumber(ARGV[i])
  local name = ARGV[i + 1]
  if string.sub(name, 1, 1) == '@' then
    local nkeys = tonumber(ARGV[i + 2])
    local keys, args = {}, {}
    for j = 1, nkeys do keys[j] = ARGV[i + 2 + j] end
    for j = i + 3 + nkeys, i + argc do args[#args + 1] = ARGV[j] end
    SUBS[tonumber(string.sub(name, 2))](keys, args)
  else
    redis.call(unpack(ARGV, i + 1, i + argc))
  end
  i = i + argc + 1
end
return #ARGV
"""

#: Most arguments a batch passes (Lua's stack limits unpack, and a huge ARGV costs memory): beyond, MULTI/EXEC.
MAX_ARGS = 100_000


def _source(subs: Sequence[str]) -> str:
    """The batch script for these sub-scripts (each a script body that reads KEYS and ARGV)."""
    functions = ",\n".join(f"function(KEYS, ARGV)\n{body}\nend" for body in subs)
    return f"local SUBS = {{\n{functions}\n}}\n{_LOOP}"


class Batches:
    """Batch scripts of one client, one per set of sub-scripts seen (a handful: the engines' enqueue scripts)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._scripts: dict[tuple[str, ...], AsyncScript] = {}

    async def execute(self, pipe: Pipeline) -> None:
        """Run what ``pipe`` (a transaction pipeline, not executed yet) queued, as one script call if it can."""
        argv, subs = _flatten(pipe)
        if argv is None:
            await pipe.execute()
            return
        if not argv:
            await pipe.reset()
            return
        key = tuple(subs)
        script = self._scripts.get(key)
        if script is None:
            script = self._scripts[key] = self.redis.register_script(_source(subs))
        await pipe.reset()
        await script(keys=[], args=argv)


def _flatten(pipe: Pipeline) -> tuple[list[Any] | None, list[str]]:
    """The batch script's ARGV and sub-scripts for ``pipe``'s commands (``None``: the batch cannot run them)."""
    argv: list[Any] = []
    subs: list[str] = []
    for args, _ in pipe.command_stack:
        name = str(args[0]).upper()
        if name in ("EVAL", "EVALSHA"):
            if name == "EVALSHA":
                return None, subs
            source = str(args[1])
            if source not in subs:
                subs.append(source)
            argv.append(len(args) - 1)
            argv.append(f"@{subs.index(source) + 1}")
            argv.extend(args[2:])
        elif name in ("MULTI", "EXEC", "WATCH", "UNWATCH", "DISCARD"):
            return None, subs
        else:
            argv.append(len(args))
            argv.extend(args)
        if len(argv) > MAX_ARGS:
            return None, subs
    return argv, subs
