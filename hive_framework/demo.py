"""``hive demo``: the README's first command — a real job on an embedded cluster, start to finish."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

from .config import HiveConfig
from .errors import HiveError
from .hive import Hive
from .supervisor import LocalCluster, PrivateNamespace, private_namespace

TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".rst", ".cfg", ".ini", ".json", ".yaml", ".yml"}


def text_files(root: Path, limit: int) -> list[Path]:
    skip = {".git", ".nox", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
    found = []
    for path in sorted(root.rglob("*")):
        if any(part in skip for part in path.relative_to(root).parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 1_000_000:
            found.append(path)
    return found[:limit]


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".")
@click.option("--spores", "-n", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1), help="Most files to count.")
def demo(path: Path, spores: int, limit: int) -> None:
    """Count words in every text file under PATH on N local spores, and print who did what."""
    files = text_files(path.resolve(), limit)
    if not files:
        raise click.ClickException(f"no text files under {path}")
    config = HiveConfig.load()
    embedded = "auto" if config.redis_is_configured() else "always"
    namespace = private_namespace("hive-demo")
    with LocalCluster(config, spores=spores, embedded=embedded, apps=("hive_framework.demo_tasks",),
                      extra_env=namespace.env, quiet=True) as local:
        click.echo(f"Redis: {local.redis_description}")
        asyncio.run(_count(local.url, namespace, files, spores, path.resolve()))


async def _count(url: str, namespace: PrivateNamespace, files: list[Path], spores: int, root: Path) -> None:
    settings: dict[str, Any] = dict(namespace.settings)
    async with Hive.connect(url, apps=["hive_framework.demo_tasks"], **settings) as hive:
        deadline = time.monotonic() + 60
        while len(await hive.nodes()) < spores:
            if time.monotonic() > deadline:
                raise HiveError(f"only {len(await hive.nodes())} of {spores} spores came up within 60s")
            await asyncio.sleep(0.1)
        click.echo(f"{spores} spores online; counting {len(files)} files...")
        started = time.monotonic()
        outcomes = [o async for o in hive.map_stream("demo.wordcount", [{"path": str(f)} for f in files], timeout=120)]
        elapsed = time.monotonic() - started
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    per_node: dict[str, int] = {}
    for o in done:
        per_node[o.result["node"]] = per_node.get(o.result["node"], 0) + 1
    biggest = sorted(done, key=lambda o: o.result["words"], reverse=True)[:10]
    click.echo(f"\n{'file':<48} {'lines':>7} {'words':>8}  top words")
    for o in biggest:
        r = o.result
        name = Path(r["path"]).relative_to(root)
        click.echo(f"{name!s:<48.48} {r['lines']:>7} {r['words']:>8}  {', '.join(r['top'])}")
    click.echo(
        f"\n{len(done)} of {len(files)} files, {sum(o.result['words'] for o in done)} words in {elapsed:.2f}s; "
        f"tasks per spore: {per_node}; failed: {len(failed)}"
    )
    for o in failed:
        click.echo(f"  failed {o.item}: {o.error}")
    if failed or len(outcomes) < len(files):
        raise SystemExit(1)
