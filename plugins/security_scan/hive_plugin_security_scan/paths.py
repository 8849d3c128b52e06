"""File names on the wire: lossless for names that are not UTF-8.

On POSIX a file name is bytes; Python gives it as a ``str`` in which undecodable bytes are lone surrogates
(``surrogateescape``). Such a string cannot travel as JSON (nor be printed), so wherever a path leaves the
process it goes through :func:`to_wire`: a plain string when it is valid UTF-8, else ``{"b64": ...}``
holding the name's exact bytes. :func:`from_wire` reverses it; :func:`display` is the printable form
(``caf\\xe9.py``), which is never read back.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

#: The key of a wire path given as the base64 of its bytes.
B64 = "b64"


class BadWirePath(ValueError):
    """A wire path that is neither a string nor ``{"b64": <base64 of the name's bytes>}``."""


def is_clean(path: str) -> bool:
    """True when ``path`` is valid UTF-8 text (no lone surrogates standing for undecodable bytes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_wire(path: str) -> str | dict[str, str]:
    """``path`` as JSON data: itself when clean, else the base64 of its bytes."""
    if is_clean(path):
        return path
    return {B64: base64.b64encode(os.fsencode(path)).decode("ascii")}


def from_wire(raw: Any) -> str:
    """The path :func:`to_wire` gave ``raw`` for (a ``str`` with surrogate escapes when it is not UTF-8)."""
    if isinstance(raw, str):
        if not is_clean(raw):
            raise BadWirePath(f"bad wire path {display(raw)!r}: lone surrogates must travel as {{'{B64}': ...}}")
        return raw
    if isinstance(raw, dict) and set(raw) == {B64} and isinstance(raw[B64], str):
        try:
            return os.fsdecode(base64.b64decode(raw[B64], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BadWirePath(f"bad wire path {raw!r}: {exc}") from None
    raise BadWirePath(f"bad wire path {raw!r}: expected a string or {{'{B64}': base64}}")


def display(path: str) -> str:
    """A printable form of ``path``: undecodable bytes shown as ``\\xNN`` (for people, not read back)."""
    if is_clean(path):
        return path
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def fs_bytes(path: str) -> bytes:
    """The exact bytes of a file name (for hashing and URIs)."""
    return os.fsencode(path)
