"""The streams engine's Lua scripts, read from the ``lua/`` folder beside this file (each documents its keys)."""

from __future__ import annotations

import functools
import hashlib
from importlib.resources import files
from typing import Any

import attrs
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from ...broker.records import COMMANDS_LUA
from ...redisutil import awaited


@attrs.frozen
class LuaScript:
    """One script: called by SHA (loaded on first use, again after a server restart) or sent whole."""

    name: str
    source: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script when the server lacks it (first call, or a restart flushed it)."""
        try:
            return await awaited(client.evalsha(self.sha, len(keys), *keys, *args))
        except NoScriptError:
            return await awaited(client.eval(self.source, len(keys), *keys, *args))

    def queue_sha(self, pipe: Pipeline, keys: list[str], args: list[Any]) -> None:
        """Queue an EVALSHA on a non-transactional pipeline; the caller retries a ``NoScriptError`` reply."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def queue_whole(self, pipe: Pipeline, keys: list[str], args: list[Any]) -> None:
        """Queue an EVAL of the whole source: for a MULTI block, where a missing script must never skip one
        command of the transaction."""
        pipe.eval(self.source, len(keys), *keys, *args)


def _read(name: str) -> str:
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _load(name: str) -> LuaScript:
    return LuaScript(name, _read(name))


#: guarded.lua's body, which calls ``run_commands`` (the broker's ``commands.lua``, sent before it).
_GUARDED = _read("guarded")

#: Several guarded saves in one call (tasks finishing together): guarded.lua as a function, called once per
#: item under pcall so that one item's error fails that item only, as in a pipeline. KEYS: each item's two
#: keys in turn; ARGV[1] the item count, then per item its ARGV count and its ARGV. Returns one reply per
#: item: guarded.lua's (0 for its false), or an error reply.
_GUARDED_BATCH = """
local function guarded(KEYS, ARGV)
%s
end
local out = {}
local i = 2
for item = 1, tonumber(ARGV[1]) do
  local argc = tonumber(ARGV[i])
  local ok, reply = pcall(guarded, {KEYS[2 * item - 1], KEYS[2 * item]}, {unpack(ARGV, i + 1, i + argc)})
  i = i + argc + 1
  if not ok then
    out[item] = {err = type(reply) == 'table' and reply.err or tostring(reply)}
  elseif reply == false then
    out[item] = 0
  else
    out[item] = reply
  end
end
return out
"""

CLAIM = _load("claim")
GUARDED = LuaScript("guarded", f"{COMMANDS_LUA}\n{_GUARDED}")
GUARDED_BATCH = LuaScript("guarded_batch", f"{COMMANDS_LUA}\n{_GUARDED_BATCH % _GUARDED}")
DUE_RETRIES = _load("due_retries")
ADD = _load("add")
DROP = _load("drop")
DEPTH = _load("depth")
FORGET_CONSUMER = _load("forget_consumer")
