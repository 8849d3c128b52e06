"""hive-plugin-security-scan: a repository security audit split across spores, with SARIF output.

The plugin (entry point ``security_scan`` in ``hive_framework.plugins``) brings:

- the ``security_scan`` task type: scan one shard (a tar.gz archive in Redis) with bandit, detect-secrets
  and our dependency-file checks;
- the ``security_findings`` reducer: merge shard results, de-duplicate, sort most severe first;
- ``claim_items`` for shard payloads, so ``ParallelSkill.parallel_execute`` needs no ``task_type``;
- the ``hive scan PATH`` command.

Importing it is cheap: bandit and detect-secrets load on a spore's first scan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hive_framework import HiveConfig, hookimpl

from .findings import REDUCER, reduce_shard_results
from .task import TASK_TYPE, security_scan

if TYPE_CHECKING:
    import click

__all__ = ["REDUCER", "TASK_TYPE", "security_scan"]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import scan

    cli.add_command(scan)


@hookimpl
def reduce(reducer: str, results: list[Any], config: HiveConfig) -> Any:
    if reducer != REDUCER:
        return None
    return reduce_shard_results(results)


@hookimpl
def claim_items(description: str, items: list[Any], config: HiveConfig) -> str | None:
    """Claim shard payloads (as :func:`~.job.uploaded_shards` makes them); nothing else."""
    if items and all(isinstance(i, dict) and {"archive", "manifest", "root"} <= i.keys() for i in items):
        return TASK_TYPE
    return None
