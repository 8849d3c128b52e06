"""Pure parsing: URLs, task payloads and the items ``claim_items`` accepts. No I/O, so hypothesis can test it all."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx

from .languages import normalise_language

DEFAULT_SENTENCES = 3
MAX_SENTENCES = 50
MAX_URL_LENGTH = 2048
#: Payload keys a scrape task understands; any other key is refused rather than ignored.
PAYLOAD_KEYS = frozenset({"url", "item", "description", "sentences", "language"})

# "in 3 sentences", "3-sentence summary", "do 3 zdań", "w 2 zdaniach": the count a map-reduce description asks for.
_SENTENCES_IN_TEXT = re.compile(r"(?<!\d)(\d{1,2})(?:\s*|-)(?:sentences?\b|zda[nń]\w*)", re.IGNORECASE)
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class InvalidPayload(ValueError):
    """A payload or URL this plugin cannot work with; the message says what is wrong."""


@attrs.frozen
class ScrapeRequest:
    """One page to scrape: the canonical URL, how many sentences and which language's stop words.

    ``given`` is the URL exactly as the payload gave it: results and the digest are keyed by it, so
    ``reduced[url]`` works for the very strings passed to map-reduce (with a fragment, without a trailing
    slash...). The canonical ``url`` is what is fetched and cached.
    """

    url: str
    sentences: int = DEFAULT_SENTENCES
    language: str = "auto"
    given: str = attrs.field(default="", eq=False)

    @property
    def as_given(self) -> str:
        return self.given or self.url


def parse_url(value: object) -> str:
    """The canonical form of an http(s) URL: lower-case scheme and host, no default port, no fragment.

    Raises :class:`InvalidPayload` for anything else (other schemes, no host, credentials, spaces...).
    Idempotent: ``parse_url(parse_url(x)) == parse_url(x)``.
    """
    if not isinstance(value, str):
        raise InvalidPayload(f"a URL must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InvalidPayload("the URL is empty")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidPayload(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_URL_CHARS.search(text):
        raise InvalidPayload(f"the URL {text[:80]!r} contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidPayload(f"{text[:80]!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidPayload(f"only http and https URLs can be scraped, got {text[:80]!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidPayload("URLs with credentials (user:password@) are refused")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidPayload(f"the URL {text[:80]!r} has no host")
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    canonical = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    try:
        parsed = httpx.URL(canonical)
        parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise InvalidPayload(f"{text[:80]!r} is not a valid URL: {exc}") from None
    if not parsed.host:
        raise InvalidPayload(f"the URL {text[:80]!r} has no host")
    return canonical


def is_url(value: object) -> bool:
    """True for a string :func:`parse_url` accepts."""
    try:
        parse_url(value)
    except InvalidPayload:
        return False
    return True


def is_url_item(item: object) -> bool:
    """True for an item this plugin claims: an http(s) URL string, or a dict whose ``url`` is one."""
    if isinstance(item, dict):
        return is_url(item.get("url"))
    return is_url(item)


def sentences_in(description: str) -> int | None:
    """The sentence count a free-text description asks for ("summarise in 3 sentences", "do 3 zdań"), if any."""
    match = _SENTENCES_IN_TEXT.search(description)
    if match is None:
        return None
    count = int(match.group(1))
    return count if 1 <= count <= MAX_SENTENCES else None


def parse_payload(payload: object) -> ScrapeRequest:
    """A task payload as a :class:`ScrapeRequest`.

    Accepts ``{"url": URL, "sentences": 3, "language": "auto"}`` and the ``{"item": URL, "description": ...}``
    that map-reduce makes of a plain URL string; when ``sentences`` is absent, a count in the description
    ("... in 2 sentences", "... do 2 zdań") is used, else 3. Raises :class:`InvalidPayload`.
    """
    if not isinstance(payload, dict):
        raise InvalidPayload(f"the payload must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(str(k) for k in payload if k not in PAYLOAD_KEYS)
    if unknown:
        raise InvalidPayload(f"unknown payload key(s) {', '.join(unknown)}; known: {', '.join(sorted(PAYLOAD_KEYS))}")
    if "url" in payload:
        given, url = payload["url"], parse_url(payload["url"])
    elif "item" in payload:
        given, url = payload["item"], parse_url(payload["item"])
    else:
        raise InvalidPayload('the payload has no "url" (or map-reduce "item")')
    description = payload.get("description", "")
    if not isinstance(description, str):
        raise InvalidPayload(f"description must be a string, got {type(description).__name__}")
    sentences = _sentences(payload["sentences"]) if "sentences" in payload else sentences_in(description)
    language = payload.get("language", "auto")
    if not isinstance(language, str):
        raise InvalidPayload(f"language must be a string, got {type(language).__name__}")
    try:
        language = normalise_language(language)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    return ScrapeRequest(url=url, sentences=sentences or DEFAULT_SENTENCES, language=language, given=given)


def _sentences(value: Any) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"sentences must be a whole number from 1 to {MAX_SENTENCES}, got {value!r}")
    if not 1 <= value <= MAX_SENTENCES:
        raise InvalidPayload(f"sentences must be from 1 to {MAX_SENTENCES}, got {value}")
    return value


def url_of(payload: object) -> str:
    """The URL a payload names, as given (for error records of payloads that did not parse)."""
    if isinstance(payload, dict):
        value = payload.get("url", payload.get("item"))
        if isinstance(value, str):
            return value
        return "" if value is None else repr(value)
    return repr(payload)
