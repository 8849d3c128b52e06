"""Ed25519 keys and signatures: who made a manifest, and who ordered a forced downgrade or a rollback.

A signature is a small JSON object ``{"algorithm": "ed25519", "key_id": ..., "signature": base64}`` over the
exact bytes signed, prefixed with a domain string so a manifest signature can never pass as a command's.
Public keys are written as the base64 of their 32 raw bytes; a key's id is the first 16 hex digits of
their SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hive_framework import ConfigError

from .errors import OTAError, PackageRejected

ALGORITHM = "ed25519"
MANIFEST_DOMAIN = b"hive-ota manifest v1\n"
COMMAND_DOMAIN = b"hive-ota command v1\n"
#: Signed commands and signature objects are small; anything bigger is refused before parsing.
MAX_SIGNATURE_TEXT = 4096
MAX_STATEMENT_TEXT = 16384


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its base64 text (an ``ed25519:`` prefix is allowed); ValueError when it is not one."""
    body = text.strip().removeprefix("ed25519:")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not an Ed25519 public key (32 bytes), it has {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write the key as PEM, readable by its owner only (created that way: never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_pem(key))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; :class:`OTAError` saying why when it cannot be used."""
    if not str(path):
        raise OTAError("no signing key: pass --key or set signing_key in [plugins.ota] (make one: hive ota keygen)")
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise OTAError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise OTAError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OTAError(f"{path} holds a {type(key).__name__}, not an Ed25519 key (make one: hive ota keygen)")
    return key


class TrustStore:
    """The public keys a spore accepts signatures from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> TrustStore:
        keys = []
        for text in texts:
            try:
                keys.append(parse_public_key(text))
            except ValueError as exc:
                raise ConfigError(f"bad entry in [plugins.ota] trusted_keys: {exc}") from None
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def verify(self, domain: bytes, data: bytes, signature: Any, *, what: str) -> str:
        """Check ``signature`` over ``domain + data``; returns the signer's key id, else :class:`PackageRejected`."""
        if signature is None or signature == "" or signature == {}:
            raise PackageRejected(f"{what} is not signed; only packages signed by a trusted key are installed")
        if isinstance(signature, str):
            if len(signature) > MAX_SIGNATURE_TEXT:
                raise PackageRejected(f"{what} has a malformed signature (too long)")
            try:
                signature = json.loads(signature)
            except ValueError:
                raise PackageRejected(f"{what} has a malformed signature (not JSON)") from None
        if not isinstance(signature, Mapping) or set(signature) != {"algorithm", "key_id", "signature"}:
            raise PackageRejected(f"{what} has a malformed signature (expected algorithm, key_id and signature)")
        if signature["algorithm"] != ALGORITHM:
            raise PackageRejected(f"{what} is signed with {signature['algorithm']!r}; only {ALGORITHM} is accepted")
        signer = signature["key_id"]
        if not isinstance(signer, str) or not isinstance(signature["signature"], str):
            raise PackageRejected(f"{what} has a malformed signature (key_id and signature must be strings)")
        if not self.keys:
            raise PackageRejected(
                f"{what} cannot be verified: this spore trusts no key (set trusted_keys in [plugins.ota])"
            )
        public = self.keys.get(signer)
        if public is None:
            raise PackageRejected(
                f"{what} is signed by key {signer[:16]!r}, which this spore does not trust "
                f"(trusted: {', '.join(sorted(self.keys))})"
            )
        try:
            raw = base64.b64decode(signature["signature"], validate=True)
            public.verify(raw, domain + data)
        except (binascii.Error, ValueError, InvalidSignature):
            raise PackageRejected(
                f"{what}: the signature of key {signer} does not match (the {what} was altered after signing)"
            ) from None
        return signer


def sign(key: Ed25519PrivateKey, domain: bytes, data: bytes) -> dict[str, str]:
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(domain + data)).decode(),
    }


# --- signed operator commands -------------------------------------------------------------------------------


def sign_command(key: Ed25519PrivateKey, purpose: str, ttl: float, **fields: Any) -> dict[str, Any]:
    """A signed, expiring, single-use order (``force``, ``rollback``) to put in a broadcast's data."""
    now = datetime.now(UTC)
    body = {
        "purpose": purpose,
        "nonce": uuid.uuid4().hex,
        "issued_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=ttl)).isoformat(),
        **fields,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return {"statement": text, "signature": sign(key, COMMAND_DOMAIN, text.encode())}


def verify_command(trust: TrustStore, command: Any, purpose: str, *, now: datetime | None = None) -> dict[str, Any]:
    """The fields of a signed command for ``purpose``; :class:`PackageRejected` unless signed, current and apt."""
    what = f"the {purpose} order"
    if not isinstance(command, Mapping) or set(command) != {"statement", "signature"}:
        raise PackageRejected(f"{what} is malformed (expected statement and signature)")
    text = command["statement"]
    if not isinstance(text, str) or len(text) > MAX_STATEMENT_TEXT:
        raise PackageRejected(f"{what} is malformed (statement must be a short string)")
    trust.verify(COMMAND_DOMAIN, text.encode(), command["signature"], what=what)
    try:
        body = json.loads(text)
    except ValueError:
        raise PackageRejected(f"{what} is malformed (statement is not JSON)") from None
    if not isinstance(body, dict) or body.get("purpose") != purpose:
        raise PackageRejected(f"{what} was signed for another purpose ({body.get('purpose')!r})")
    if not isinstance(body.get("nonce"), str) or not body["nonce"]:
        raise PackageRejected(f"{what} has no nonce")
    try:
        expires = datetime.fromisoformat(str(body["expires_at"]))
    except (KeyError, ValueError):
        raise PackageRejected(f"{what} has no valid expires_at") from None
    if expires.tzinfo is None:
        raise PackageRejected(f"{what} has an expires_at without a time zone")
    if (now or datetime.now(UTC)) >= expires:
        raise PackageRejected(f"{what} expired at {expires.isoformat()}; sign a new one")
    return body
