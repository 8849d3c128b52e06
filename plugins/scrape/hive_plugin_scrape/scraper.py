"""One URL end to end (cache, fetch, extract, summarise) and the digest of many; the task type calls these."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .extract import extract_article
from .fetch import Page, Resolver, fetch
from .languages import AUTO, detect_language, language_code
from .polite import Politeness, RedisPoliteness
from .settings import PLUGIN_NAME, ScrapeSettings
from .summarise import summarise
from .urls import ScrapeRequest

if TYPE_CHECKING:
    import httpx
    from hive_framework import HiveConfig
    from redis.asyncio import Redis

#: Bump when the shape of a result changes, so old cached results are not served.
CACHE_VERSION = 2


async def scrape(
    request: ScrapeRequest,
    settings: ScrapeSettings,
    *,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    politeness: Politeness | None = None,
) -> dict[str, Any]:
    """Fetch, extract and summarise one page: the task's result. Raises :class:`~.fetch.ScrapeError`."""
    page = await fetch(request.url, settings, resolver=resolver, transport=transport, politeness=politeness)
    # Parsing and ranking are CPU work: off the event loop, so the spore keeps beating and fetching.
    return await asyncio.to_thread(summarise_page, page, request)


def summarise_page(page: Page, request: ScrapeRequest) -> dict[str, Any]:
    """The result record for a fetched page."""
    article = extract_article(page)
    language = detect_language(article.text) if request.language == AUTO else request.language
    return {
        "url": request.as_given,
        "canonical_url": request.url,
        "final_url": page.final_url,
        "title": article.title,
        "date": article.date,
        "language": language_code(language) if language else None,
        "summary": summarise(article.text, request.sentences, language),
        "status_code": page.status_code,
        "media_type": page.media_type,
        **(article.charset.record() if article.charset else {}),
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cached": False,
    }


def error_record(url: str, reason: str, kind: str) -> dict[str, Any]:
    """The result of a URL that could not be summarised: listed, with its reason, by the digest."""
    return {"url": url, "error": reason, "error_kind": kind}


# --------------------------------------------------------------------------------------------------
# The cache: results by (url, sentences, language), in the hive's Redis under its key prefix
# --------------------------------------------------------------------------------------------------


def hive_politeness(redis: Redis, config: HiveConfig) -> RedisPoliteness:
    """The per-host schedule every spore of this hive shares (``HIVE_KEY_PREFIX:scrape:host:HOST``)."""
    return RedisPoliteness(redis, f"{config.key_prefix}:{PLUGIN_NAME}")


def cache_key(config: HiveConfig, request: ScrapeRequest) -> str:
    digest = hashlib.sha256(f"{request.url}\n{request.sentences}\n{request.language}".encode()).hexdigest()
    return f"{config.key_prefix}:{PLUGIN_NAME}:v{CACHE_VERSION}:{digest}"


async def cached_result(redis: Redis, config: HiveConfig, request: ScrapeRequest) -> dict[str, Any] | None:
    raw = await redis.get(cache_key(config, request))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    # The cache is shared by every spelling of a URL; the result names the one this request used.
    return {**value, "url": request.as_given, "cached": True} if isinstance(value, dict) else None


async def store_result(
    redis: Redis, config: HiveConfig, request: ScrapeRequest, result: dict[str, Any], ttl: float
) -> None:
    if ttl > 0:
        await redis.set(cache_key(config, request), json.dumps(result), px=max(int(ttl * 1000), 1))


# --------------------------------------------------------------------------------------------------
# The digest reducer
# --------------------------------------------------------------------------------------------------


def digest(results: list[Any]) -> dict[str, dict[str, Any]]:
    """``{url: {"title", "summary"}}`` for summarised pages and ``{url: {"error", "error_kind"}}`` for failures.

    Results that are not scrape records (no ``url``) are left out; a URL given twice keeps its last record.
    """
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        if not isinstance(result, dict) or not isinstance(result.get("url"), str):
            continue
        if "error" in result:
            out[result["url"]] = {"error": result["error"], "error_kind": result.get("error_kind", "unknown")}
        else:
            out[result["url"]] = {"title": result.get("title"), "summary": list(result.get("summary") or [])}
    return out
