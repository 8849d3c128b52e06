"""``hive ota``: keygen, build, publish, status, rollback, list, and ``spore`` (a supervised spore)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click
from hive_framework import CliState, MessageBroker, echo_json

from .errors import OTAError
from .settings import OTASettings


def _settings(state: CliState) -> OTASettings:
    return OTASettings.from_config(state.config())


async def _with_manager(state: CliState, key: str | None, action: Any) -> Any:
    from .manager import OTAManager

    kernel = state.kernel()
    settings = OTASettings.from_config(kernel.config)
    async with MessageBroker(kernel) as broker:
        return await action(OTAManager(broker, settings=settings, signing_key=key))


@click.group("ota")
def ota() -> None:
    """Over-the-air updates of the spores' app code: signed packages, staged rollout, automatic rollback."""


@ota.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder for ota-signing.key and ota-signing.pub.")
@click.option("--name", default="ota-signing", show_default=True, help="File name stem.")
def keygen(out_dir: Path, name: str) -> None:
    """Make an Ed25519 key pair: sign packages with the private key, trust the public one on the spores."""
    from .signing import generate_key, key_id, public_key_text, write_private_key

    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise OTAError(f"{path} already exists; keys are never overwritten (move it away or pick --name)")
    key = generate_key()
    write_private_key(key, private)
    public.write_text(public_key_text(key) + "\n", encoding="utf-8")
    click.echo(f"private key: {private} (keep it secret; [plugins.ota] signing_key = \"{private}\")")
    click.echo(f"public key:  {public_key_text(key)}  (id {key_id(key.public_key())})")
    click.echo(f"trust it on the spores, in hive.toml:\n[plugins.ota]\ntrusted_keys = [\"{public_key_text(key)}\"]")


@ota.command()
@click.argument("version")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--description", "-d", default="", help="What this release changes.")
@click.option("--app", "apps", multiple=True,
              help="Module the spores load from the release (default: each source package).")
@click.option("--requirement", "-r", "requirements", multiple=True,
              help="PEP 508 requirement (default: the sources' requirements.txt).")
@click.option("--no-deps", is_flag=True, help="Package no requirements.")
@click.option("--key", type=click.Path(dir_okay=False), help="Signing key (default: [plugins.ota] signing_key).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--expires-in", type=click.FloatRange(min=0, min_open=True), help="Days the manifest stays valid.")
@click.pass_obj
def build(state: CliState, version: str, sources: tuple[Path, ...], description: str, apps: tuple[str, ...],
          requirements: tuple[str, ...], no_deps: bool, key: str | None, out_dir: Path | None,
          expires_in: float | None) -> None:
    """Zip SOURCES (folders or files) as release VERSION with a signed manifest; print where it is."""
    from .manager import OTAManager

    settings = _settings(state)

    class _Offline:  # building needs no Redis
        config = state.config()

    manager = OTAManager(_Offline(), settings=settings, signing_key=key)  # type: ignore[arg-type]
    package = asyncio.run(manager.create_package(
        version, description, list(sources), include_dependencies=not no_deps,
        requirements=list(requirements) or None, apps=list(apps) or None,
        ttl=expires_in * 86400 if expires_in else None, out_dir=out_dir,
    ))
    echo_json(package.describe())


def _load_package(state: CliState, spec: str) -> Any:
    from .package import UpdatePackage

    path = Path(spec)
    if not path.exists():
        candidate = _settings(state).packages_dir(state.config()) / f"hive-ota-{spec}.zip"
        if not candidate.exists():
            raise OTAError(f"no package {spec!r}: not a file, nor a version built into {candidate.parent}")
        path = candidate
    return UpdatePackage.from_file(path)


@ota.command()
@click.argument("package")
@click.option("--node", "nodes", multiple=True, help="Update only this node (repeatable); default: every online spore.")
@click.option("--canary", type=click.IntRange(min=0), default=0, show_default=True,
              help="Update this many nodes first; the rest only when they all committed.")
@click.option("--url", help="Let the spores fetch the package here (https, http or file) instead of from Redis.")
@click.option("--force", is_flag=True, help="Sign an order letting spores take a version not above their highest.")
@click.option("--key", type=click.Path(dir_okay=False), help="Signing key for --force.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300, show_default=True,
              help="Seconds each wave may take.")
@click.option("--no-wait", is_flag=True, help="Send the update and print its id without following it.")
@click.pass_obj
def publish(state: CliState, package: str, nodes: tuple[str, ...], canary: int, url: str | None, force: bool,
            key: str | None, timeout: float, no_wait: bool) -> None:
    """Ship PACKAGE (a zip, or a version built here) to the spores and follow the rollout; exit 1 on any failure."""
    update = _load_package(state, package)

    async def go(manager: Any) -> Any:
        if no_wait:
            return {"message_id": await manager.broadcast_update(update, list(nodes), package_url=url, force=force)}
        return await manager.rollout(update, list(nodes) or None, canary=canary, timeout=timeout,
                                     package_url=url, force=force)

    result = asyncio.run(_with_manager(state, key, go))
    echo_json(result)
    if result.get("ok") is False:
        sys.exit(1)


@ota.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def status(state: CliState, as_json: bool) -> None:
    """Each node's running version and the state of its last update (committed, rolled_back, rejected...)."""

    async def go(manager: Any) -> Any:
        return await manager.status()

    rows = asyncio.run(_with_manager(state, None, go))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no spores known")
        return
    click.echo(f"{'node':<28} {'online':<7} {'version':<12} {'state':<12} {'target':<12} reason")
    for row in rows:
        click.echo(f"{row['node']:<28.28} {'yes' if row['online'] else 'no':<7} {row['version'] or '-':<12.12} "
                   f"{row['state']:<12} {row['target'] or '-':<12.12} {row['reason'] or ''}")


@ota.command()
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable); default: every online spore.")
@click.option("--to", "to_version", help="Go to this installed version instead of each node's previous one.")
@click.option("--key", type=click.Path(dir_okay=False), help="Signing key (default: [plugins.ota] signing_key).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300, show_default=True)
@click.pass_obj
def rollback(state: CliState, nodes: tuple[str, ...], to_version: str | None, key: str | None, timeout: float) -> None:
    """Switch spores back to their previous release (a signed order); exit 1 unless every node committed."""

    async def go(manager: Any) -> Any:
        return await manager.rollback(list(nodes) or None, to_version=to_version, timeout=timeout)

    result = asyncio.run(_with_manager(state, key, go))
    echo_json(result)
    if not result["ok"]:
        sys.exit(1)


@ota.command("list")
@click.option("--cleanup", "keep", type=click.IntRange(min=0), help="Delete all but the KEEP newest packages.")
@click.pass_obj
def list_cmd(state: CliState, keep: int | None) -> None:
    """Packages built here, and whether each is published in Redis."""

    async def go(manager: Any) -> Any:
        if keep is not None:
            return {"removed": await manager.cleanup_old_packages(keep)}
        return await manager.list_packages()

    echo_json(asyncio.run(_with_manager(state, None, go)))


@ota.command("spore", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("spore_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def spore(state: CliState, spore_args: tuple[str, ...]) -> None:
    """Run a supervised spore (any 'hive spore' options): it runs the installed release and is switched,
    probed and rolled back by this process. The apps come from the release (or --app)."""
    from .supervisor import Supervisor

    config = state.config()
    settings = OTASettings.from_config(config)
    hive_args = ["--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()]
    overrides = state.overrides
    if overrides.get("redis_url"):
        hive_args += ["--redis-url", str(overrides["redis_url"])]
    if overrides.get("toml_file"):
        hive_args += ["--config", str(overrides["toml_file"])]
    for app in overrides.get("apps", ()):
        hive_args += ["--app", app]
    # The supervisor never imports the apps: they live in the release it may have to roll back.
    supervisor = Supervisor(config.evolve(apps=()), settings, hive_args=hive_args, spore_args=list(spore_args))
    sys.exit(asyncio.run(supervisor.run()))
