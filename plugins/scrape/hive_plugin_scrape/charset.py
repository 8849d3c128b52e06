"""Which character set a page's bytes are in: the declared one when the bytes agree, else detected.

A ``Content-Type`` header (or an HTML ``<meta charset>``) that contradicts the bytes is common: a server
configured for ISO-8859-1 serving UTF-8 files gives mojibake ("Ã³" for "ó"), one declaring UTF-8 for
Windows-1250 files gives replacement characters. So the declaration is checked against the bytes:

1. bytes that are valid UTF-8 with non-ASCII characters are UTF-8, whatever was declared (text in a legacy
   single-byte charset is practically never valid multi-byte UTF-8);
2. otherwise the declared charset is used if it decodes the bytes without error;
3. otherwise charset-normalizer detects one; UTF-8 with replacement characters is the last resort.

The result says what was declared, what was used and why, and the task's result records it.
"""

from __future__ import annotations

import codecs
import re

import attrs

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@attrs.frozen(kw_only=True)
class Decoded:
    """A body as text. ``decision``: ``declared``, ``utf-8`` (bytes are UTF-8 despite the declaration),
    ``detected`` (charset-normalizer), ``default`` (nothing declared, ASCII or UTF-8) or ``replaced``
    (nothing fitted: UTF-8 with replacement characters)."""

    text: str
    charset: str
    declared: str | None
    decision: str

    def record(self) -> dict[str, str | None]:
        return {"charset": self.charset, "charset_declared": self.declared, "charset_decision": self.decision}


def declared_charset(body: bytes, header: str | None, *, is_html: bool) -> str | None:
    """The charset named by the header, else by an HTML ``<meta>`` in the first 4 KB (normalised, or ``None``)."""
    for name in (header, _meta_charset(body) if is_html else None):
        normal = _lookup(name)
        if normal:
            return normal
    return None


def decode_body(body: bytes, header: str | None, *, is_html: bool) -> Decoded:
    """``body`` as text, its charset decided as the module docstring says."""
    declared = declared_charset(body, header, is_html=is_html)
    if body.isascii():
        return Decoded(text=body.decode("ascii"), charset=declared or "ascii", declared=declared,
                       decision="declared" if declared else "default")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        utf8 = declared in (None, "utf-8", "utf-8-sig")
        return Decoded(text=text, charset="utf-8", declared=declared,
                       decision=("declared" if declared else "default") if utf8 else "utf-8")
    if declared and declared not in ("utf-8", "utf-8-sig"):
        try:
            return Decoded(text=body.decode(declared), charset=declared, declared=declared, decision="declared")
        except (UnicodeDecodeError, LookupError):
            pass
    detected = _detect(body)
    if detected is not None:
        return Decoded(text=body.decode(detected, errors="replace"), charset=detected, declared=declared,
                       decision="detected")
    return Decoded(text=body.decode("utf-8", errors="replace"), charset="utf-8", declared=declared,
                   decision="replaced")


#: The legacy encodings web browsers support (the WHATWG Encoding Standard's list, as Python codec names).
#: Detection chooses among these only: left free, charset-normalizer picks DOS code pages such as cp775 for
#: French Windows-1252 text, which no web page uses.
WEB_ENCODINGS = (
    "cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_5", "iso8859_6", "iso8859_7", "iso8859_8", "iso8859_10",
    "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16", "koi8_r", "koi8_u", "mac_cyrillic", "cp874",
    "shift_jis", "euc_jp", "iso2022_jp", "gb18030", "big5", "euc_kr", "utf_16",
)


def _detect(body: bytes) -> str | None:
    from charset_normalizer import from_bytes

    best = from_bytes(body[:200_000], cp_isolation=list(WEB_ENCODINGS)).best()
    return _lookup(best.encoding) if best is not None else None


def _meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def _lookup(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        return None
