"""hive-plugin-scrape: fetch web articles, extract their text and summarise them, as a distributed task type.

Everything hive needs is in this module, found through the ``scrape`` entry point:

* the task type ``web_scraping`` (the seed's name) and its alias ``scrape``, found because they are module-level
  :func:`~hive_framework.task` objects;
* ``claim_items``: a map-reduce call whose items are all URLs goes to ``web_scraping``;
* ``reduce``: the ``scrape_digest`` reducer, the task type's default;
* ``register_commands``: ``hive scrape URL...``.

The work itself lives in small modules: :mod:`.urls` (parsing), :mod:`.fetch` (the guarded HTTP client),
:mod:`.extract` (trafilatura), :mod:`.summarise` (TextRank) and :mod:`.scraper` (cache and digest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from hive_framework import HiveConfig, TaskContext, hookimpl, task

from .fetch import ScrapeError
from .scraper import cached_result, digest, error_record, hive_politeness, scrape, store_result
from .settings import ScrapeSettings, plugin_version
from .urls import InvalidPayload, is_url_item, parse_payload, url_of

if TYPE_CHECKING:
    import click

__version__ = plugin_version()
__all__ = ["DIGEST", "TASK_TYPE", "ScrapeError", "ScrapeSettings", "scrape_alias", "web_scraping"]

TASK_TYPE = "web_scraping"
DIGEST = "scrape_digest"


@task(TASK_TYPE, priority="background", max_retries=2, reducer=DIGEST)
async def web_scraping(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Fetch a web page, extract its article and summarise it in N of its own sentences.

    Payload: ``{"url": URL, "sentences": 3, "language": "auto"}`` (or map-reduce's ``{"item": URL}``).
    Returns ``{"url", "final_url", "title", "date", "language", "summary": [sentences], ...}``, or, for a
    URL that cannot be summarised, ``{"url", "error", "error_kind"}``. Transient failures (timeouts,
    refused connections, HTTP 429 and 5xx) raise while attempts remain, so hive retries them with backoff.
    """
    try:
        request = parse_payload(payload)
    except InvalidPayload as exc:
        return error_record(url_of(payload), str(exc), "invalid_payload")
    settings = ScrapeSettings.from_config(context.config)
    cached = await cached_result(context.redis, context.config, request)
    if cached is not None:
        return cached
    try:
        result = await scrape(request, settings, politeness=hive_politeness(context.redis, context.config))
    except ScrapeError as exc:
        if exc.transient and context.task.attempt <= context.task.max_retries:
            raise
        return error_record(request.as_given, exc.reason, exc.kind)
    await store_result(context.redis, context.config, request, result, settings.cache_ttl)
    return result


#: The same task type under a shorter name (``hive submit scrape -p '{"url": ...}'``).
scrape_alias = attrs.evolve(web_scraping, name="scrape")


@hookimpl
def claim_items(description: str, items: list[Any], config: HiveConfig) -> str | None:
    """Claim a map-reduce job whose items are all http(s) URLs (strings, or dicts with a ``url``)."""
    if items and all(is_url_item(item) for item in items):
        return TASK_TYPE
    return None


@hookimpl
def reduce(reducer: str, results: list[Any], config: HiveConfig) -> Any:
    """``scrape_digest``: ``{url: {"title", "summary"}}``, failures as ``{url: {"error", "error_kind"}}``."""
    if reducer != DIGEST:
        return None
    return digest(results)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import scrape_command

    cli.add_command(scrape_command)
