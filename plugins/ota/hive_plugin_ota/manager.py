"""``OTAManager``: the seed's API (build, broadcast, apply, list, clean up) plus staged rollouts and rollback."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.version import InvalidVersion, Version

from .errors import OTAError
from .package import UpdatePackage, build_package
from .settings import OTASettings
from .signing import load_private_key, sign_command
from .store import (
    TERMINAL_STATES,
    OTAKeys,
    delete_stored,
    read_reports,
    store_package,
    stored_packages,
)

if TYPE_CHECKING:
    from hive_framework import MessageBroker

UPDATE_COMMAND = "UPDATE_SYSTEM"
ROLLBACK_COMMAND = "OTA_ROLLBACK"
#: How long a targeted spore has to answer the broadcast before it counts as unreachable.
REPLY_TIMEOUT = 5.0


class OTAManager:
    """Build, ship and follow updates (nexus or operator side); ``apply_update`` runs on a spore.

    ``OTAManager(broker)`` reads ``[plugins.ota]`` from the broker's config. ``signing_key`` (a key or a PEM
    path) overrides the ``signing_key`` setting; ``spore`` is needed only for :meth:`apply_update`.
    """

    def __init__(
        self,
        message_broker: MessageBroker | None = None,
        *,
        settings: OTASettings | None = None,
        signing_key: Ed25519PrivateKey | str | Path | None = None,
        spore: Any = None,
    ) -> None:
        if message_broker is None:
            from hive_framework import MessageBroker

            message_broker = MessageBroker() if spore is None else spore.broker
        self.broker = message_broker
        self.config = message_broker.config
        self.settings = settings or OTASettings.from_config(self.config)
        self.keys = OTAKeys(self.config.key_prefix)
        self.spore = spore
        self._signing_key = signing_key

    # --- keys ------------------------------------------------------------------------------------------

    def signing_key(self) -> Ed25519PrivateKey:
        if isinstance(self._signing_key, Ed25519PrivateKey):
            return self._signing_key
        key = load_private_key(self._signing_key or self.settings.signing_key_path() or "")
        self._signing_key = key
        return key

    @property
    def package_dir(self) -> Path:
        return self.settings.packages_dir(self.config)

    # --- the seed's API ----------------------------------------------------------------------------------

    async def create_package(
        self,
        version: str,
        description: str,
        source_paths: Sequence[str | Path],
        include_dependencies: bool = True,
        *,
        requirements: Sequence[str] | None = None,
        apps: Sequence[str] | None = None,
        ttl: float | None = None,
        out_dir: Path | None = None,
    ) -> UpdatePackage:
        """Zip ``source_paths`` with a signed manifest (``requirements.txt`` of the sources when
        ``include_dependencies``); ``apps`` default to the sources that are packages or modules."""
        return await asyncio.to_thread(
            build_package,
            self.signing_key(),
            version=version,
            description=description,
            source_paths=list(source_paths),
            out_dir=out_dir or self.package_dir,
            include_dependencies=include_dependencies,
            requirements=requirements,
            apps=apps,
            ttl=ttl or self.settings.manifest_ttl,
        )

    async def publish(self, package: UpdatePackage) -> str:
        """Store the package in Redis (chunked, capped by ``max_package_bytes``); returns its ``hive-ota://`` URL."""
        return await store_package(
            self.broker.redis, self.keys, package.path, checksum=package.checksum, version=package.version,
            chunk_bytes=self.settings.chunk_bytes, max_bytes=self.settings.max_package_bytes,
        )

    async def broadcast_update(
        self,
        package: UpdatePackage,
        target_nodes: Sequence[str] | None = None,
        *,
        package_url: str | None = None,
        force: bool = False,
    ) -> str:
        """Send ``UPDATE_SYSTEM`` to ``target_nodes`` (all spores when empty); returns the message id.

        The package is published to Redis first unless ``package_url`` (http, https or file) says where it is.
        ``force`` adds a signed order that lets a spore take a version not above its highest.
        """
        url = package_url or await self.publish(package)
        data = package.ticket(url)
        if force:
            data["force"] = sign_command(
                self.signing_key(), "force", self.settings.authorization_ttl,
                manifest_sha256=hashlib.sha256(package.manifest.raw).hexdigest(), version=package.version,
            )
        return await self.broker.broadcast_control(UPDATE_COMMAND, data, list(target_nodes or []))

    async def apply_update(
        self, package_url: str, expected_checksum: str, restart_after: bool = True
    ) -> dict[str, Any]:
        """On a spore: download, verify and install the package, then (``restart_after``) restart on it."""
        if self.spore is None:
            raise OTAError("apply_update runs on a spore: OTAManager(broker, spore=spore)")
        from .updater import updater_for

        return await updater_for(self.spore).apply(
            {"package_url": package_url, "checksum": expected_checksum, "restart_after": restart_after}
        )

    async def list_packages(self) -> list[dict[str, Any]]:
        """Packages built here (``package_dir``), oldest version first, each marked when it is published in Redis."""
        published = {p["checksum"]: p for p in await stored_packages(self.broker.redis, self.keys)}
        found = []
        for path in self.package_dir.glob("hive-ota-*.zip") if self.package_dir.is_dir() else []:
            try:
                package = await asyncio.to_thread(UpdatePackage.from_file, path)
            except OTAError:
                continue
            found.append({**package.describe(), "published": package.checksum in published})
        return sorted(found, key=lambda p: _version_key(p["version"]))

    async def cleanup_old_packages(self, keep_latest: int = 5) -> list[str]:
        """Delete all but the ``keep_latest`` newest packages here, and their copies in Redis; returns their paths."""
        if keep_latest < 0:
            raise OTAError(f"keep_latest must be >= 0, got {keep_latest}")
        packages = await self.list_packages()
        doomed = packages[: max(len(packages) - keep_latest, 0)]
        for entry in doomed:
            await asyncio.to_thread(Path(entry["path"]).unlink, missing_ok=True)
            await delete_stored(self.broker.redis, self.keys, entry["checksum"])
        return [entry["path"] for entry in doomed]

    # --- rollouts ------------------------------------------------------------------------------------------

    async def rollout(
        self,
        package: UpdatePackage,
        target_nodes: Sequence[str] | None = None,
        *,
        canary: int = 0,
        timeout: float = 300.0,
        package_url: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Update ``target_nodes`` (default: every online spore): first ``canary`` of them, once they are all
        healthy the rest. Stops at the first failure; the result says what each node did and who was skipped."""
        targets = await self._targets(target_nodes)
        url = package_url or await self.publish(package)
        waves = [targets[:canary], targets[canary:]] if 0 < canary < len(targets) else [targets]
        nodes: dict[str, dict[str, Any]] = {}
        for index, wave in enumerate(waves):
            message_id = await self.broadcast_update(package, wave, package_url=url, force=force)
            nodes.update(await self.follow(message_id, wave, timeout=timeout))
            failed = [n for n in wave if nodes[n].get("state") != "committed"]
            if failed:
                skipped = [n for w in waves[index + 1:] for n in w]
                return {"version": package.version, "ok": False, "stopped_at": failed[0], "nodes": nodes,
                        "skipped": skipped, "canary": wave if len(waves) > 1 and index == 0 else []}
        return {"version": package.version, "ok": True, "stopped_at": None, "nodes": nodes, "skipped": [],
                "canary": waves[0] if len(waves) > 1 else []}

    async def rollback(self, target_nodes: Sequence[str] | None = None, *, to_version: str | None = None,
                       timeout: float = 300.0) -> dict[str, Any]:
        """Send a signed ``OTA_ROLLBACK`` (to each node's previous release, or ``to_version``) and follow it."""
        targets = await self._targets(target_nodes)
        order = sign_command(self.signing_key(), "rollback", self.settings.authorization_ttl,
                             to=to_version, nodes=list(target_nodes or []))
        message_id = await self.broker.broadcast_control(ROLLBACK_COMMAND, {"order": order}, list(target_nodes or []))
        nodes = await self.follow(message_id, targets, timeout=timeout)
        return {"ok": all(n.get("state") == "committed" for n in nodes.values()), "to": to_version, "nodes": nodes}

    async def _targets(self, target_nodes: Sequence[str] | None) -> list[str]:
        if target_nodes:
            return list(dict.fromkeys(target_nodes))
        online = sorted(n.node_id for n in await self.broker.get_nodes())
        if not online:
            raise OTAError("no spore is online to update")
        return online

    async def follow(self, message_id: str, targets: Sequence[str], *, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until each target reports a final state for ``message_id`` (or the time is up); returns the reports."""
        replies = await self.broker.collect_replies(message_id, expected=len(targets), timeout=REPLY_TIMEOUT)
        answered = {r.node_id for r in replies} | {r.node_name for r in replies}
        ids = {r.node_name: r.node_id for r in replies}
        results: dict[str, dict[str, Any]] = {}
        for target in targets:
            if target not in answered:
                results[target] = {"node": target, "state": "unreachable",
                                   "reason": "no reply: offline, or the ota plugin is not installed there"}
        deadline = time.monotonic() + timeout
        while True:
            reports = await read_reports(self.broker.redis, self.keys)
            for target in targets:
                if target in results:
                    continue
                entry = reports.get(ids.get(target, target))
                if entry and entry.get("update_id") == message_id and entry.get("state") in TERMINAL_STATES:
                    results[target] = entry
            if len(results) == len(targets):
                return results
            if time.monotonic() > deadline:
                for target in targets:
                    if target not in results:
                        entry = reports.get(ids.get(target, target)) or {}
                        results[target] = {**entry, "node": target, "state": "timeout",
                                           "reason": f"no final state within {timeout:g}s "
                                                     f"(last: {entry.get('state', 'none')})"}
                return results
            await asyncio.sleep(0.1)

    async def status(self) -> list[dict[str, Any]]:
        """Each known node: online or not, the version it runs, its last update's state and reason."""
        online = {n.node_id: n for n in await self.broker.get_nodes()}
        reports = await read_reports(self.broker.redis, self.keys)
        rows = []
        for node_id in sorted(set(online) | set(reports)):
            info = online.get(node_id)
            entry = reports.get(node_id, {})
            rows.append({
                "node": node_id,
                "online": info is not None,
                "version": info.code_version if info is not None else entry.get("version", ""),
                "state": entry.get("state", "-"),
                "target": entry.get("target"),
                "reason": entry.get("reason"),
                "at": entry.get("at"),
            })
        return rows


def _version_key(text: str) -> tuple[int, Any]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)
