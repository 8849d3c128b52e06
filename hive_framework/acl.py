"""Redis ACL rules for the three roles of a hive (``hive redis acl``): least privilege per process kind.

Each role gets one user, ``{prefix}-{role}``, allowed:

- keys: ``~{prefix}:*`` and the configured queue names (``~{queue}`` and ``~{queue}:*`` when a queue is
  not under the prefix); nothing else, so a hive's users cannot read another hive's keys;
- channels: the broadcast channel only (``&{channel}``);
- commands: the ones the code sends (:data:`COMMANDS`), none ``@dangerous`` (FLUSHALL, CONFIG, KEYS,
  DEBUG, CLIENT KILL, ACL ...); spores and the nexus may also SUBSCRIBE to the broadcast channel, the
  client only PUBLISH to it; only the nexus may SCAN (which sees key names of every prefix).

tests/test_redis_acl.py runs spores, a nexus and a client each as its own user on a Redis whose ``default``
user is off, and fails when Redis's ``ACL LOG`` records any denied command, so a command added to the code
without a rule here fails CI. Passwords are never printed: a rule carries the SHA-256 of the password
(``#<hex>``), read from ``REDIS_ACL_<ROLE>_PASSWORD``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from .config import HiveConfig

ROLES = ("spore", "client", "nexus")

#: The commands every role sends, by family (found by running spores, a nexus and clients of both engines
#: under these rules with Redis's ACL LOG watched: tests/test_redis_acl.py). Nothing @dangerous: no
#: FLUSHALL, CONFIG, KEYS, DEBUG, SHUTDOWN, ACL, MONITOR, CLIENT KILL.
_CONNECTION = ("ping", "hello", "auth", "select", "echo")
_TRANSACTION = ("multi", "exec", "discard", "watch", "unwatch")
_SCRIPT = ("eval", "evalsha", "script|load", "script|exists")
_STRING = ("get", "set", "mget", "psetex", "setex", "incr", "incrby", "exists", "del", "unlink", "expire", "pexpire",
           "ttl", "pttl", "type", "rename", "strlen")
_HASH = ("hget", "hset", "hgetall", "hdel", "hkeys", "hmget", "hlen", "hincrby", "hexists")
_SET = ("sadd", "srem", "smembers", "scard", "sismember")
_ZSET = ("zadd", "zrem", "zrange", "zrevrange", "zcard", "zscore", "zincrby", "zcount", "zrangebyscore",
         "zrevrangebyscore", "zremrangebyscore", "zremrangebyrank", "zpopmin")
_LIST = ("rpush", "lpush", "lrange", "lindex", "llen", "ltrim", "lpop", "rpop", "blpop", "brpop", "lrem", "lmove",
         "blmove")
_STREAM_WRITE = ("xadd", "xdel", "xlen", "xrange", "xrevrange", "xread", "xtrim")
_STREAM_GROUP = ("xreadgroup", "xack", "xclaim", "xautoclaim", "xpending", "xgroup|create",
                 "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers", "xinfo|stream")
#: SCAN lists key names of the whole database (ACL key patterns do not filter it): only the nexus, whose
#: watchdog looks for stranded per-node queues, gets it.
_NEXUS_ONLY = ("scan", "info")
_PUBSUB_SEND = ("publish",)
_PUBSUB_LISTEN = ("subscribe", "unsubscribe")

_DATA = (*_CONNECTION, *_TRANSACTION, *_SCRIPT, *_STRING, *_HASH, *_SET, *_ZSET, *_LIST, *_STREAM_WRITE)

COMMANDS: dict[str, tuple[str, ...]] = {
    "spore": (*_DATA, *_STREAM_GROUP, *_PUBSUB_SEND, *_PUBSUB_LISTEN),
    "client": (*_DATA, *_STREAM_GROUP, *_PUBSUB_SEND),
    "nexus": (*_DATA, *_STREAM_GROUP, *_NEXUS_ONLY, *_PUBSUB_SEND, *_PUBSUB_LISTEN),
}

PASSWORD_ENV = {role: f"REDIS_ACL_{role.upper()}_PASSWORD" for role in ROLES}


def user_name(config: HiveConfig, role: str) -> str:
    return f"{config.key_prefix}-{role}"


def key_patterns(config: HiveConfig) -> list[str]:
    patterns = [f"~{config.key_prefix}:*"]
    for queue in (config.high_priority_queue, config.background_queue):
        if not queue.startswith(f"{config.key_prefix}:"):
            patterns += [f"~{queue}", f"~{queue}:*"]
    return patterns


def rules(config: HiveConfig, passwords: Mapping[str, str] | None = None) -> list[str]:
    """One ``user ...`` line (aclfile syntax; ``ACL SETUSER`` takes the same words) per role.

    A role with a password gets ``on #<sha256>``; without one it is ``off`` (cannot log in) until a
    password is set, so a rule printed without passwords never opens a door.
    """
    lines = []
    for role in ROLES:
        secret = (passwords or {}).get(role, "")
        auth = ["on", "#" + hashlib.sha256(secret.encode()).hexdigest()] if secret else ["off"]
        words = [
            "user", user_name(config, role), "reset", *auth, "resetkeys", *key_patterns(config),
            "resetchannels", f"&{config.broadcast_channel}", "-@all", *(f"+{c}" for c in COMMANDS[role]),
        ]
        lines.append(" ".join(words))
    return lines
