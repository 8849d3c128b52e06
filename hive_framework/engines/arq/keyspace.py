"""ARQ's own keys moved under the hive's prefix.

ARQ names its keys with global constants (``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:retry:<id>``,
``arq:result:<id>``, ``arq:abort``), so two hives on one Redis would share them and deleting a hive's
namespace would leave them behind. The ARQ worker therefore talks to Redis through :class:`ArqKeyspaceRedis`,
which rewrites the key arguments of exactly the commands ARQ sends with those keys to ``{prefix}:arq:...``.
"""

from __future__ import annotations

from typing import Any

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

#: ARQ's key names: each prefix, and its one fixed key. Only these are moved, so a queue named ``arq:...``
#: or a prefix of ``arq`` is never rewritten twice.
_ARQ_PREFIXES = (job_key_prefix, in_progress_key_prefix, retry_key_prefix, result_key_prefix)
#: Commands whose every argument is a key (DEL, EXISTS...); for the others only the first argument is.
_ALL_KEYS = frozenset({"DEL", "EXISTS", "UNLINK", "WATCH"})


class ArqKeys:
    """Where ARQ's keys of one hive live: ``{prefix}:arq:job:<id>`` and so on."""

    def __init__(self, root: str) -> None:
        self.root = root  # "{prefix}:arq"

    def rewrite(self, key: Any) -> Any:
        """One of ARQ's keys (``arq:job:<id>``...) -> ``{root}:job:<id>``; anything else unchanged."""
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        if isinstance(name, str) and (name == abort_jobs_ss or name.startswith(_ARQ_PREFIXES)):
            moved = f"{self.root}:{name.removeprefix('arq:')}"
            return moved.encode() if isinstance(key, bytes) else moved
        return key

    def job(self, job_id: str) -> str:
        return self.rewrite(job_key_prefix + job_id)  # type: ignore[no-any-return]

    def in_progress(self, job_id: str) -> str:
        return self.rewrite(in_progress_key_prefix + job_id)  # type: ignore[no-any-return]

    def retry(self, job_id: str) -> str:
        return self.rewrite(retry_key_prefix + job_id)  # type: ignore[no-any-return]

    def result(self, job_id: str) -> str:
        return self.rewrite(result_key_prefix + job_id)  # type: ignore[no-any-return]

    @property
    def abort(self) -> str:
        return self.rewrite(abort_jobs_ss)  # type: ignore[no-any-return]

    def command(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(args) < 2:
            return args
        name = str(args[0]).upper()
        if name in _ALL_KEYS:
            return (args[0], *(self.rewrite(a) for a in args[1:]))
        return (args[0], self.rewrite(args[1]), *args[2:])


class _KeyspacePipeline(Pipeline):
    arq_keys: ArqKeys

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return super().execute_command(*self.arq_keys.command(args), **kwargs)


class ArqKeyspaceRedis(Redis):
    """A client on the same connection pool that moves ARQ's keys under the hive's prefix."""

    arq_keys: ArqKeys

    @classmethod
    def sharing(cls, client: Redis, arq_keys: ArqKeys) -> ArqKeyspaceRedis:
        instance = cls(connection_pool=client.connection_pool)
        instance.arq_keys = arq_keys
        return instance

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await super().execute_command(*self.arq_keys.command(args), **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _KeyspacePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.arq_keys = self.arq_keys
        return pipe
