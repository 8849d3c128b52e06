"""Where packages travel and where update outcomes are told: Redis chunks, http(s) and file URLs, per-node reports.

Redis layout (under the hive's ``key_prefix``; nothing else in hive uses ``:ota:``):

* ``{prefix}:ota:pkg:{sha256}:data``: list of the package's chunks (``chunk_bytes`` each);
* ``{prefix}:ota:pkg:{sha256}:meta``: hash with ``version``, ``size``, ``chunks``, ``stored_at``;
* ``{prefix}:ota:packages``: sorted set of stored packages by time;
* ``{prefix}:ota:nodes``: hash node id -> JSON report of that node's last update (what ``hive ota status`` shows).

A package stored in Redis is named ``hive-ota://<sha256>``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from hive_framework.redisutil import awaited, fields, text
from redis.asyncio import Redis

from .errors import OTAError, PackageRejected

SCHEME = "hive-ota"
_BLOCK = 256 * 1024


class OTAKeys:
    """The plugin's Redis keys for one hive."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def data(self, checksum: str) -> str:
        return f"{self.prefix}:ota:pkg:{checksum}:data"

    def meta(self, checksum: str) -> str:
        return f"{self.prefix}:ota:pkg:{checksum}:meta"

    @property
    def packages(self) -> str:
        return f"{self.prefix}:ota:packages"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:ota:nodes"


def package_url(checksum: str) -> str:
    return f"{SCHEME}://{checksum}"


async def store_package(
    redis: Redis, keys: OTAKeys, path: Path, *, checksum: str, version: str, chunk_bytes: int, max_bytes: int
) -> str:
    """Copy a package file into Redis in chunks (once; a second call finds it) and return its ``hive-ota://`` URL."""
    size = (await asyncio.to_thread(path.stat)).st_size
    if size > max_bytes:
        raise OTAError(f"{path} is {size} bytes, over max_package_bytes ({max_bytes}) in [plugins.ota]")
    if await redis.exists(keys.meta(checksum)):
        return package_url(checksum)
    staging = f"{keys.data(checksum)}:staging:{time.time_ns()}"
    chunks = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(chunk_bytes):
                await awaited(redis.rpush(staging, block))
                chunks += 1
        async with redis.pipeline(transaction=True) as pipe:
            if chunks:
                pipe.rename(staging, keys.data(checksum))
            pipe.hset(keys.meta(checksum), mapping={
                "version": version, "size": size, "chunks": chunks, "stored_at": datetime.now(UTC).isoformat(),
            })
            pipe.zadd(keys.packages, {checksum: time.time()})
            await pipe.execute()
    finally:
        await redis.delete(staging)
    return package_url(checksum)


async def stored_packages(redis: Redis, keys: OTAKeys) -> list[dict[str, Any]]:
    out = []
    for raw in await redis.zrange(keys.packages, 0, -1):
        checksum = text(raw)
        meta = await awaited(redis.hgetall(keys.meta(checksum)))
        if meta:
            out.append({"checksum": checksum, "url": package_url(checksum), **fields(meta)})
    return out


async def delete_stored(redis: Redis, keys: OTAKeys, checksum: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.data(checksum), keys.meta(checksum))
        pipe.zrem(keys.packages, checksum)
        await pipe.execute()


async def fetch(url: str, dest: Path, *, cap: int, redis: Redis | None, keys: OTAKeys | None) -> int:
    """Download ``url`` into ``dest``, never more than ``cap`` bytes; returns the size.

    Any failure is :class:`PackageRejected`.
    """
    if not isinstance(url, str) or not url:
        raise PackageRejected(f"package_url must be a non-empty string, got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise PackageRejected(f"package_url {url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == SCHEME:
        if redis is None or keys is None:
            raise PackageRejected(f"{url} is stored in Redis, but no Redis connection was given")
        return await _fetch_redis(redis, keys, parts.netloc, dest, cap)
    if scheme == "file":
        return await asyncio.to_thread(_copy_capped, Path(unquote(parts.path)), dest, cap, url)
    if scheme in ("http", "https"):
        return await asyncio.to_thread(_download_capped, url, dest, cap)
    raise PackageRejected(f"package_url {url!r}: unsupported scheme (use {SCHEME}://, https://, http:// or file://)")


async def _fetch_redis(redis: Redis, keys: OTAKeys, checksum: str, dest: Path, cap: int) -> int:
    meta = fields(await awaited(redis.hgetall(keys.meta(checksum))))
    if not meta:
        raise PackageRejected(f"package {checksum[:12]} is not stored in Redis (never published, or cleaned up)")
    size = int(meta.get("size", "0"))
    if size > cap:
        raise PackageRejected(f"the package is {size} bytes, over the {cap} bytes its manifest allows")
    written = 0
    with dest.open("wb") as out:
        for index in range(int(meta.get("chunks", "0"))):
            block = await awaited(redis.lindex(keys.data(checksum), index))
            if block is None:
                raise PackageRejected(f"package {checksum[:12]} lost chunk {index} in Redis")
            written += len(block)
            if written > cap:
                raise PackageRejected(f"the package is over the {cap} bytes its manifest allows")
            out.write(block if isinstance(block, bytes) else str(block).encode())
    return written


def _copy_capped(source: Path, dest: Path, cap: int, url: str) -> int:
    try:
        with source.open("rb") as handle:
            return _stream(handle, dest, cap)
    except OSError as exc:
        raise PackageRejected(f"cannot read {url}: {exc.strerror or exc}") from None


def _download_capped(url: str, dest: Path, cap: int) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": "hive-plugin-ota"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # the caller checked the scheme
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise PackageRejected(f"{url} is {length} bytes, over the {cap} bytes its manifest allows")
            return _stream(response, dest, cap)
    except PackageRejected:
        raise
    except (OSError, ValueError) as exc:
        raise PackageRejected(f"cannot download {url}: {exc}") from None


def _stream(handle: Any, dest: Path, cap: int) -> int:
    written = 0
    with dest.open("wb") as out:
        while block := handle.read(_BLOCK):
            written += len(block)
            if written > cap:
                raise PackageRejected(f"the download is over the {cap} bytes its manifest allows; stopped")
            out.write(block)
    return written


# --- per-node reports -------------------------------------------------------------------------------------------

#: States after which a node's update is over: the rollout looks for these.
TERMINAL_STATES = frozenset({"committed", "rejected", "rolled_back", "failed"})


async def report(redis: Redis, keys: OTAKeys, node_id: str, **fields: Any) -> dict[str, Any]:
    """Record a node's update state (merged over its previous one) for the nexus, ``hive ota status``, rollouts."""
    previous = await read_report(redis, keys, node_id) or {}
    entry = {**previous, **fields, "node": node_id, "at": datetime.now(UTC).isoformat()}
    await awaited(redis.hset(keys.nodes, node_id, json.dumps(entry, default=str)))
    return entry


async def read_report(redis: Redis, keys: OTAKeys, node_id: str) -> dict[str, Any] | None:
    raw = await awaited(redis.hget(keys.nodes, node_id))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def read_reports(redis: Redis, keys: OTAKeys) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node, raw in (await awaited(redis.hgetall(keys.nodes))).items():
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            out[text(node)] = value
    return out
