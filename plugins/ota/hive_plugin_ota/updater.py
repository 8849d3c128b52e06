"""The spore side of an update: check the announcement, download, verify, unpack into a new release, hand over.

Order of checks (each failure rejects the whole update with its reason; nothing is switched):

1. the spore runs under a supervisor (``hive ota spore``), which alone can switch and roll back;
2. the manifest parses and is signed by a trusted key; it has not expired;
3. its version is higher than any this node has trusted (or a signed ``force`` order names this manifest);
4. the download stays under the size the manifest allows and matches the announced SHA-256;
5. every zip member is safe (:class:`~hive_plugin_ota.package.PackageReader`) and each file matches the manifest;
6. the requirements install into the release's own ``site-packages``.

Then the spore records the version as trusted, asks its supervisor to switch (``pending.json``) and stops
gracefully (running tasks finish or go back to the queue); the supervisor restarts it on the new release,
probes it and commits or rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import uuid
import weakref
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from packaging.version import Version

from . import runtime
from .errors import OTAError, PackageRejected
from .manifest import Manifest, parse_version
from .package import Limits, PackageReader, sha256_file
from .releases import Release, ReleaseStore, install_requirements, release_name, write_json
from .settings import OTASettings
from .signing import MANIFEST_DOMAIN, TrustStore, verify_command
from .store import SCHEME, OTAKeys, fetch, report

logger = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: How far in the future a manifest's created_at may lie (clock skew between machines).
CLOCK_SKEW = timedelta(hours=1)

_UPDATERS: weakref.WeakKeyDictionary[Any, Updater] = weakref.WeakKeyDictionary()


def updater_for(spore: Any) -> Updater:
    """The one :class:`Updater` of a spore (made on first use)."""
    updater = _UPDATERS.get(spore)
    if updater is None:
        updater = _UPDATERS[spore] = Updater(spore)
    return updater


@attrs.frozen
class Checked:
    """An announcement that passed the checks that need no download."""

    manifest: Manifest
    signer: str
    force_nonce: tuple[str, float] | None = None


class Updater:
    """Installs updates on one spore (``context`` of the hooks)."""

    def __init__(self, spore: Any) -> None:
        self.spore = spore
        self.config = spore.config
        self.settings = OTASettings.from_config(self.config)
        self.store = ReleaseStore(self.settings.root_dir(self.config))
        self.trust = TrustStore.from_texts(self.settings.trusted_keys)
        self.keys = OTAKeys(self.config.key_prefix)
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Set once this process asked its supervisor to switch: it takes no other update before it stops.
        self.handed_over: str | None = None

    @property
    def node_id(self) -> str:
        return str(self.spore.node_id)

    @property
    def running_version(self) -> str:
        return runtime.VERSION or str(self.config.code_version or "")

    async def report(self, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            await report(self.spore.broker.redis, self.keys, self.node_id, version=self.running_version,
                         release=runtime.RELEASE, **fields)

    # --- broadcast handlers ----------------------------------------------------------------------------

    async def on_update(self, data: dict[str, Any], update_id: str) -> str:
        """``UPDATE_SYSTEM``: check at once (the reply says accepted or why not), install in the background."""
        version = str(data.get("version", "?"))[:100]
        try:
            self.available_or_reject()
            if data.get("manifest") is not None:
                self.check(data)
        except PackageRejected as exc:
            await self.report(state="rejected", target=version, update_id=update_id, reason=str(exc))
            self.spore.log.warning("update %s rejected: %s", version, exc)
            return f"rejected: {exc}"
        await self.report(state="accepted", target=version, update_id=update_id, reason=None)
        package = {**data, "update_id": update_id}
        task = asyncio.create_task(self._install_in_background(package), name=f"ota-install-{version}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return f"accepted: installing {version}"

    async def _install_in_background(self, package: dict[str, Any]) -> None:
        with contextlib.suppress(OTAError):  # already reported
            await self.spore.kernel.apply_update(package, self.spore)

    async def on_rollback(self, data: dict[str, Any], update_id: str) -> str:
        """``OTA_ROLLBACK``: a signed order to go back to the previous (or a named) installed release."""
        try:
            self.available_or_reject()
            order = verify_command(self.trust, data.get("order"), "rollback")
            nodes = order.get("nodes") or []
            if nodes and not {self.node_id, self.spore.node_name} & set(map(str, nodes)):
                raise PackageRejected("the rollback order was signed for other nodes")
            target = self._rollback_target(order.get("to"))
            self.store.use_nonce(str(order["nonce"]), datetime.fromisoformat(order["expires_at"]).timestamp())
        except PackageRejected as exc:
            await self.report(state="rejected", action="rollback", update_id=update_id, reason=str(exc))
            return f"rejected: {exc}"
        await self.report(state="restarting", action="rollback", target=target.version, update_id=update_id,
                          reason=None)
        self.hand_over(target, action="rollback", update_id=update_id)
        return f"rolling back to {target.version}"

    def _rollback_target(self, to: Any) -> Release:
        running = runtime.RELEASE
        if to:
            wanted = parse_version(str(to), "the rollback target")
            matches = [r for r in self.store.releases() if r.version and Version(r.version) == wanted]
            if not matches:
                raise PackageRejected(f"release {to} is not installed on this node")
            target = matches[-1]
        else:
            previous = self.store.previous()
            if previous is None:
                raise PackageRejected("this node has no previous release to roll back to")
            target = previous
        if target.name == running:
            raise PackageRejected(f"this node already runs {target.version}")
        return target

    # --- checks ----------------------------------------------------------------------------------------

    def available_or_reject(self) -> None:
        """Refuse when unsupervised, busy installing, or already restarting onto another release."""
        self.supervised_or_reject()
        if self.lock.locked():
            raise PackageRejected("another update is being installed on this node; try again when it is done")
        if self.handed_over is not None:
            raise PackageRejected(f"this node is restarting onto {self.handed_over}; try again when it is back")

    def supervised_or_reject(self) -> None:
        if not runtime.SUPERVISED:
            raise PackageRejected(
                "this spore is not supervised, so it could not switch releases or roll back; "
                "start it with 'hive ota spore' instead of 'hive spore'"
            )

    def check(self, data: dict[str, Any], *, manifest_bytes: bytes | None = None,
              signature: Any = None) -> Checked:
        """The checks that need no download: manifest, signature, expiry, version order, checksum form."""
        if manifest_bytes is None:
            text = data.get("manifest")
            if not isinstance(text, str):
                raise PackageRejected("the update carries no manifest (expected a JSON string)")
            manifest_bytes = text.encode("utf-8", "surrogatepass")
            signature = data.get("signature")
        checksum = data.get("checksum")
        if not isinstance(checksum, str) or not _SHA256.fullmatch(checksum):
            shown = repr(checksum)[:80]
            raise PackageRejected(f"checksum must be the package's SHA-256 as 64 lowercase hex digits, got {shown}")
        signer = self.trust.verify(MANIFEST_DOMAIN, manifest_bytes, signature, what="the manifest")
        manifest = Manifest.parse(manifest_bytes)
        now = datetime.now(UTC)
        if manifest.is_expired(now):
            raise PackageRejected(
                f"the manifest of {manifest.version_text} expired at {manifest.expires_at.isoformat()}"
            )
        if manifest.created_at > now + CLOCK_SKEW:
            raise PackageRejected(f"the manifest claims to be made in the future ({manifest.created_at.isoformat()})")
        if "version" in data and str(data["version"]) != manifest.version_text:
            raise PackageRejected(
                f"the announced version {data['version']!r} is not the signed manifest's {manifest.version_text}"
            )
        force_nonce = None
        highest = self.store.highest()
        if highest is not None and manifest.version <= highest:
            if data.get("force") is None:
                raise PackageRejected(
                    f"version {manifest.version_text} is not newer than {highest}, the highest this node has "
                    "trusted (versions only go up; an operator may force it: hive ota publish --force)"
                )
            order = verify_command(self.trust, data["force"], "force")
            if order.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest():
                raise PackageRejected("the force order was signed for another package")
            force_nonce = (str(order["nonce"]), datetime.fromisoformat(order["expires_at"]).timestamp())
        return Checked(manifest=manifest, signer=signer, force_nonce=force_nonce)

    # --- installing --------------------------------------------------------------------------------------

    async def apply(self, package: dict[str, Any]) -> dict[str, Any]:
        """The ``apply_update`` hook: install ``package`` (an ``UPDATE_SYSTEM`` data dict); returns the outcome.

        Raises :class:`PackageRejected` (reported to the nexus) when any check fails.
        """
        if not isinstance(package, dict):
            raise PackageRejected(f"an update package must be a dict, got {type(package).__name__}")
        update_id = str(package.get("update_id") or uuid.uuid4().hex)
        version = str(package.get("version", "?"))[:100]
        restart_after = package.get("restart_after", True) is not False
        async with self.lock:
            try:
                release = await self._install(package)
            except PackageRejected as exc:
                await self.report(state="rejected", target=version, update_id=update_id, reason=str(exc))
                self.spore.log.warning("update %s rejected: %s", version, exc)
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                await self.report(state="failed", target=version, update_id=update_id, reason=reason)
                self.spore.log.exception("update %s failed", version)
                raise OTAError(f"update {version} failed: {reason}") from exc
        outcome = {"installed": release.version, "release": release.name, "restarting": restart_after}
        await self.report(state="restarting" if restart_after else "installed", target=release.version,
                          update_id=update_id, reason=None)
        self.spore.log.info("update %s installed in %s", release.version, release.path)
        self.hand_over(release, action="update", update_id=update_id, restart=restart_after)
        return outcome

    async def _install(self, package: dict[str, Any]) -> Release:
        self.supervised_or_reject()
        if self.handed_over is not None:
            raise PackageRejected(f"this node is restarting onto {self.handed_over}; try again when it is back")
        announced = package.get("manifest") is not None
        checked = self.check(package) if announced else None
        self.store.ensure()
        downloads = self.store.root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        archive = downloads / f"{uuid.uuid4().hex}.zip"
        incoming: Path | None = None
        try:
            cap = self.settings.max_package_bytes
            if checked is not None:
                cap = min(cap, checked.manifest.archive_bound())
            url = package.get("package_url", "")
            redis = self.spore.broker.redis if isinstance(url, str) and url.startswith(f"{SCHEME}:") else None
            await fetch(url, archive, cap=cap, redis=redis, keys=self.keys)
            digest = await asyncio.to_thread(sha256_file, archive)
            expected = package.get("checksum")
            if digest != expected:
                raise PackageRejected(f"checksum mismatch: the package's SHA-256 is {digest}, expected {expected}")
            limits = Limits.from_settings(self.settings)
            incoming = self.store.new_incoming()
            checked = await asyncio.to_thread(self._unpack, archive, limits, incoming, package, checked)
            manifest = checked.manifest
            await install_requirements(incoming, manifest.requirements, pip_args=self.settings.pip_args,
                                       timeout=self.settings.pip_timeout)
            (incoming / "manifest.json").write_bytes(manifest.raw)
            release = self.store.finish_incoming(incoming, release_name(manifest.version_text, digest), {
                "version": manifest.version_text, "apps": list(manifest.apps), "checksum": digest,
                "signer": checked.signer, "installed_at": datetime.now(UTC).isoformat(),
                "requirements": list(manifest.requirements), "description": manifest.description,
            })
            incoming = None
            if checked.force_nonce is not None:
                self.store.use_nonce(*checked.force_nonce)
            self.store.record_highest(manifest.version)
            return release
        finally:
            archive.unlink(missing_ok=True)
            if incoming is not None:
                shutil.rmtree(incoming, ignore_errors=True)

    def _unpack(self, archive: Path, limits: Limits, incoming: Path, package: dict[str, Any],
                checked: Checked | None) -> Checked:
        with PackageReader(archive, limits) as reader:
            if checked is None:  # the seed's apply_update(url, checksum): the manifest comes from the zip
                checked = self.check(package, manifest_bytes=reader.manifest_bytes, signature=reader.signature_text)
            reader.extract(checked.manifest, incoming)
        return checked

    def hand_over(self, release: Release, *, action: str, update_id: str, restart: bool = True) -> None:
        """Ask the supervisor to switch to ``release`` and, unless ``restart`` is false, stop gracefully now."""
        write_json(self.store.pending_file, {
            "action": action, "release": release.name, "version": release.version, "update_id": update_id,
            "node_id": self.node_id, "from": runtime.RELEASE, "requested_at": datetime.now(UTC).isoformat(),
        })
        if restart:
            self.handed_over = release.version
            self.spore.log.info("stopping so the supervisor restarts this spore on %s", release.version)
            self.spore.request_stop()
