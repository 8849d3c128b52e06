"""The one place that turns settings into a Redis client.

Every part of the hive (CLI, spores, nexus, Hive Monitor, health probe) gets its Redis client here, so
TLS, Sentinel and the durable acknowledgement apply everywhere at once:

- ``redis://`` / ``rediss://`` / ``unix://``: one server. ``rediss://`` verifies the server's certificate
  by default (``HIVE_REDIS_CA_FILE`` names the CA bundle; ``HIVE_REDIS_CERT_FILE`` and
  ``HIVE_REDIS_KEY_FILE`` a client certificate when the server asks for one; ``HIVE_REDIS_TLS_VERIFY=false``
  turns verification off, for tests only).
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (``rediss+sentinel://`` for
  TLS to the data nodes): the primary that the sentinels name for ``service``. The client asks the
  sentinels again whenever a connection to the primary fails, so after a failover the next connection goes
  to the new primary (redis-py's ``SentinelConnectionPool``). The URL's user and password are for the data
  nodes; ``HIVE_REDIS_SENTINEL_PASSWORD`` is the sentinels' own (none by default).
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``): a Redis Cluster. A
  hive keeps every key in one hash slot, so ``HIVE_KEY_PREFIX`` must be a hash tag (``{shop}``) and the
  queues must be under it; the client asks the cluster which primary holds that slot and talks to it
  alone (transactions, Lua and pub/sub work as on one server). Load spreads over the primaries by running
  several hives (prefixes), one slot each; a hive whose slot moves must reconnect.
"""

from __future__ import annotations

import ssl
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ResponseError

from .config import HiveConfig
from .errors import ConfigError, HiveError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class NotDurable(HiveError):
    """An enqueue was written on the primary but fewer replicas (or disks) than asked acknowledged it in time."""


def _tls_kwargs(config: HiveConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required" if config.redis_tls_verify else "none"}
    if not config.redis_tls_verify:
        kwargs["ssl_check_hostname"] = False
    if config.redis_ca_file:
        kwargs["ssl_ca_certs"] = config.redis_ca_file
    if config.redis_cert_file:
        kwargs["ssl_certfile"] = config.redis_cert_file
    if config.redis_key_file:
        kwargs["ssl_keyfile"] = config.redis_key_file
    return kwargs


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """``(sentinels, service, db, username, password)`` of a ``redis+sentinel://`` URL; ConfigError when malformed."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, netloc.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "26379"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"redis_url: bad sentinel address {item!r} (want host:port)")
        sentinels.append((host.strip("[]") or "localhost", int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ConfigError(
            "redis_url: a sentinel URL is redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
        )
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(f"redis_url: after the service name only a database number may follow, got {parts.path!r}")
    return sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0, username, password


def hash_tag(prefix: str) -> str | None:
    """The hash tag that decides a key's slot when the key starts with ``prefix`` (Redis's rule), else None."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    if start != 0 or end <= 1:
        return None  # a tag later in the prefix would still put the hive in one slot, but keep it simple
    return prefix[1:end]


def _cluster_target(config: HiveConfig) -> tuple[str, int, str | None, str | None]:
    """``(host, port, username, password)`` of the primary that holds the hive's slot."""
    from redis.cluster import ClusterNode, RedisCluster

    url = config.effective_redis_url()
    scheme = urlsplit(url).scheme
    prefix = config.key_prefix
    if hash_tag(prefix) is None:
        raise ConfigError(
            f"on a Redis Cluster HIVE_KEY_PREFIX must be a hash tag, like '{{{prefix}}}', so that every key of the "
            f"hive is in one slot; got {prefix!r}"
        )
    outside = [q for q in (config.high_priority_queue, config.background_queue) if not q.startswith(prefix + ":")]
    if outside:
        raise ConfigError(f"on a Redis Cluster the queues must be under the key prefix {prefix!r}: {outside}")
    sentinels, _, _, username, password = parse_sentinel_url(url + "/x")  # same host list syntax
    startup = [ClusterNode(host, port) for host, port in sentinels]
    extra = _tls_kwargs(config) if scheme == "rediss+cluster" else {}
    cluster = RedisCluster(startup_nodes=startup, username=username, password=password, ssl=bool(extra),
                           socket_connect_timeout=5, **extra)
    try:
        node = cluster.get_node_from_key(f"{prefix}:probe")
    finally:
        cluster.close()
    return node.host, int(node.port), username, password


def _cluster_options(config: HiveConfig) -> dict[str, Any]:
    host, port, username, password = _cluster_target(config)
    options: dict[str, Any] = {"host": host, "port": port, "username": username, "password": password}
    if urlsplit(config.effective_redis_url()).scheme == "rediss+cluster":
        options.update(ssl=True, **_tls_kwargs(config))
    return options


def _options(
    config: HiveConfig, connect_timeout: float | None, socket_timeout: float | None, keepalive: bool = False
) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_connect_timeout": connect_timeout}
    if socket_timeout is not None:
        options["socket_timeout"] = socket_timeout
    if keepalive:
        options["socket_keepalive"] = True
    return options


def redis_client(
    config: HiveConfig,
    *,
    connect_timeout: float | None = 5.0,
    socket_timeout: float | None = None,
    keepalive: bool = False,
) -> Redis:
    """An asyncio Redis client for ``config`` (see the module docstring for what the URL may be); ``keepalive``
    turns TCP keep-alive on (long-lived processes: a silently dead peer is noticed)."""
    url = config.effective_redis_url()
    scheme = urlsplit(url).scheme
    options = _options(config, connect_timeout, socket_timeout, keepalive)
    if scheme in SENTINEL_SCHEMES:
        sentinels, service, db, username, password = parse_sentinel_url(url)
        node = dict(options, db=db, username=username, password=password)
        if scheme == "rediss+sentinel":
            node.update(ssl=True, **_tls_kwargs(config))
        sentinel_kwargs = dict(options, password=config.redis_sentinel_password or None)
        return cast(Redis, Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **node).master_for(service))
    if scheme in CLUSTER_SCHEMES:
        return Redis(**options, **_cluster_options(config))
    if scheme == "rediss":
        options.update(_tls_kwargs(config))
    return cast(Redis, Redis.from_url(url, **options))


def sync_redis_client(
    config: HiveConfig, *, connect_timeout: float | None = 5.0, socket_timeout: float | None = None
) -> redis.Redis:
    """The blocking twin of :func:`redis_client` (for probes and test fixtures)."""
    url = config.effective_redis_url()
    scheme = urlsplit(url).scheme
    options = _options(config, connect_timeout, socket_timeout)
    if scheme in SENTINEL_SCHEMES:
        sentinels, service, db, username, password = parse_sentinel_url(url)
        node = dict(options, db=db, username=username, password=password)
        if scheme == "rediss+sentinel":
            node.update(ssl=True, **_tls_kwargs(config))
        sentinel_kwargs = dict(options, password=config.redis_sentinel_password or None)
        sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **node)
        return cast(redis.Redis, sentinel.master_for(service))
    if scheme in CLUSTER_SCHEMES:
        return redis.Redis(**options, **_cluster_options(config))
    if scheme == "rediss":
        options.update(_tls_kwargs(config))
    return redis.Redis.from_url(url, **options)


def describe_error(exc: BaseException) -> str:
    """One line naming why a connection failed (a TLS verification failure says so, not a traceback)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message or cause.reason}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate verification failed: {text}"
    return text


async def confirm_durable(client: Redis, config: HiveConfig, what: str) -> None:
    """Return once the writes made so far reached ``redis_wait_replicas`` replicas (and with
    ``redis_wait_aof``, the primary's and those replicas' append-only files); :class:`NotDurable` when they
    did not within ``redis_wait_timeout`` seconds. A no-op when both are off (the default).

    Replication is one ordered stream, so a small write followed by ``WAIT`` on one connection covers every
    write the primary took before it, whichever connection made them.
    """
    replicas, aof = config.redis_wait_replicas, config.redis_wait_aof
    if replicas <= 0 and not aof:
        return
    timeout_ms = max(1, int(config.redis_wait_timeout * 1000))
    async with client.pipeline(transaction=False) as pipe:
        pipe.incr(f"{config.key_prefix}:durability:probe")
        if aof:
            pipe.execute_command("WAITAOF", 1, replicas, timeout_ms)
        else:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            _, acked = await pipe.execute()
        except ResponseError as exc:
            if aof and "unknown command" in str(exc).lower():
                raise ConfigError(
                    "HIVE_REDIS_WAIT_AOF needs WAITAOF, which Redis has from 7.2 on; this server has not "
                    "(use HIVE_REDIS_WAIT_REPLICAS alone, with appendfsync always on the servers)"
                ) from None
            raise
    if aof:
        local, remote = (int(x) for x in acked)
        if local < 1 or remote < replicas:
            raise NotDurable(
                f"{what} written, but within {timeout_ms} ms the primary's AOF fsync {'did' if local else 'did not'} "
                f"happen and {remote} of {replicas} replicas fsynced it; it may be lost if the primary fails now"
            )
    elif int(acked) < replicas:
        raise NotDurable(
            f"{what} written, but only {int(acked)} of {replicas} replicas acknowledged it within {timeout_ms} ms; "
            "it may be lost if the primary fails now"
        )
