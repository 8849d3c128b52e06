"""``hive redis``: commands about the Redis a hive runs on (ACL rules, a connection check)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click
from redis.exceptions import NoPermissionError

from . import acl
from .clikit import CliState, pass_state
from .connection import describe_error, redis_client
from .redisutil import text


@click.group("redis")
def redis_group() -> None:
    """The hive's Redis: least-privilege ACL rules and a connection check (TLS, Sentinel)."""


@redis_group.command("acl")
@click.option("--write", "path", type=click.Path(dir_okay=False), help="Write an aclfile (mode 600), not print.")
@click.option("--no-passwords", is_flag=True, help="Emit the users 'off' (no password) instead of requiring them.")
@pass_state
def acl_cmd(state: CliState, path: str | None, no_passwords: bool) -> None:
    """ACL rules for the spore, client and nexus users of this hive (prefix, queues, channel, commands).

    Passwords come from REDIS_ACL_SPORE_PASSWORD, REDIS_ACL_CLIENT_PASSWORD and REDIS_ACL_NEXUS_PASSWORD
    and appear only as their SHA-256 (never in clear).
    """
    config = state.config()
    passwords = {role: os.environ.get(env, "") for role, env in acl.PASSWORD_ENV.items()}
    missing = [acl.PASSWORD_ENV[r] for r, p in passwords.items() if not p]
    if missing and not no_passwords:
        raise click.ClickException(f"set {', '.join(missing)} (or pass --no-passwords to emit the users off)")
    lines = acl.rules(config, passwords)
    if path:
        target = Path(path)
        target.touch(mode=0o600)
        target.write_text("".join(line + "\n" for line in lines))
        click.echo(f"wrote {len(lines)} users to {target} (load with: aclfile {target.resolve()})")
    else:
        for line in lines:
            click.echo(line)


@redis_group.command("check")
@pass_state
def check_cmd(state: CliState) -> None:
    """Connect as configured and print which server answered (role, version, replicas)."""
    config = state.config()

    async def run() -> str:
        client = redis_client(config, connect_timeout=5, socket_timeout=5)
        try:
            await client.ping()
            try:
                info = await client.info("replication")
                server = await client.info("server")
            except NoPermissionError:  # the spore and client ACL users may not run INFO
                return f"{config.safe_redis_url()}: answers (this user may not run INFO)"
        except Exception as exc:
            raise click.ClickException(f"Redis at {config.safe_redis_url()}: {describe_error(exc)}") from None
        finally:
            await client.aclose()
        return (
            f"{config.safe_redis_url()}: redis {text(server.get('redis_version', '?'))}, role {info.get('role')}, "
            f"{info.get('connected_slaves', 0)} replica(s)"
        )

    click.echo(asyncio.run(run()))
