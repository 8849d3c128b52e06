"""hive-plugin-ota: over-the-air updates of the spores' app code, signed, staged and rolled back on failure.

Found through the ``ota`` entry point; everything hive needs is here:

* ``on_broadcast``: ``UPDATE_SYSTEM`` (check, then install in the background) and ``OTA_ROLLBACK``;
* ``apply_update``: install one package on this spore (what ``UPDATE_SYSTEM`` runs);
* ``register_commands``: ``hive ota keygen | build | publish | status | rollback | list | spore``;
* the task type ``ota.probe``, which a supervisor pins to a freshly restarted spore as its health probe.

:class:`OTAManager` is the seed's API for Python callers.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from hive_framework import BroadcastMessage, TaskContext, hookimpl, task

from . import runtime
from .errors import ManifestError, OTAError, PackageRejected
from .manager import OTAManager
from .package import UpdatePackage
from .settings import OTASettings, plugin_version

if TYPE_CHECKING:
    import click

__version__ = plugin_version()
__all__ = ["ManifestError", "OTAError", "OTAManager", "OTASettings", "PackageRejected", "UpdatePackage", "ota_probe"]

#: Health-check functions an app module may define (sync or async; raise to fail the probe).
HEALTH_CHECK = "ota_health_check"


@task("ota.probe", priority="high_priority", max_retries=0, timeout=60)
async def ota_probe(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Health probe run on a restarted spore: which release it runs, and each app's ``ota_health_check()``."""
    checked = []
    for name in context.config.apps:
        check = getattr(sys.modules.get(name), HEALTH_CHECK, None)
        if callable(check):
            outcome = check()
            if inspect.isawaitable(outcome):
                await outcome
            checked.append(name)
    return {
        "code_version": context.config.code_version,
        "release": runtime.RELEASE,
        "node": context.node_id,
        "pid": os.getpid(),
        "apps": list(context.config.apps),
        "health_checks": checked,
    }


@hookimpl
async def on_broadcast(message: BroadcastMessage, context: Any) -> str | None:
    command = message.command.upper()
    if command not in ("UPDATE_SYSTEM", "OTA_ROLLBACK"):
        return None
    from hive_framework import HiveError

    from .store import OTAKeys, report
    from .updater import updater_for

    try:
        updater = updater_for(context)
    except HiveError as exc:  # e.g. a bad [plugins.ota] section: say so to the sender and the nexus
        await report(context.broker.redis, OTAKeys(context.config.key_prefix), context.node_id,
                     state="rejected", update_id=message.message_id, reason=str(exc))
        return f"rejected: {exc}"
    if command == "UPDATE_SYSTEM":
        return await updater.on_update(dict(message.data), message.message_id)
    return await updater.on_rollback(dict(message.data), message.message_id)


@hookimpl
def apply_update(package: Any, context: Any) -> Awaitable[Any] | None:
    if not isinstance(package, dict) or "package_url" not in package:
        return None
    from .updater import updater_for

    return updater_for(context).apply(package)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import ota

    cli.add_command(ota)
