"""Password storage with a salted, slow key-derivation function."""

import hashlib
import hmac
import os


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return salt.hex() + ":" + digest.hex()


def check_password(password: str, stored: str) -> bool:
    salt, _, _ = stored.partition(":")
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)
