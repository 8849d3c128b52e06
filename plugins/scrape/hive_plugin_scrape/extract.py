"""Main text and title of a page, with trafilatura (why trafilatura: see the plugin's README)."""

from __future__ import annotations

import codecs
import contextlib
from typing import Any

import attrs

from .fetch import Page, ScrapeError
from .summarise import is_candidate

#: Containers trafilatura's English-centric rules miss: ad slots named in Polish ("reklama") or spelled out.
PRUNE_XPATH = (
    "//*[contains(@class, 'reklam') or contains(@id, 'reklam')]",
    "//*[contains(@class, 'advert') or contains(@id, 'advert')]",
)


@attrs.frozen(kw_only=True)
class Article:
    title: str | None
    text: str
    date: str | None = None


def extract_article(page: Page) -> Article:
    """The article in ``page``: HTML through trafilatura, plain text as it is; :class:`ScrapeError` if empty."""
    article = _from_html(page) if page.is_html else _from_text(page)
    if not article.text.strip():
        raise ScrapeError("no_text", "no article text found on the page")
    return article


def _from_html(page: Page) -> Article:
    import trafilatura  # imported on first use: `hive --help` and spores start without it

    content: Any = _decode(page.body, page.charset) if page.charset else page.body
    document = trafilatura.bare_extraction(
        content,
        url=page.final_url,
        favor_precision=True,  # rather lose a paragraph than summarise a comment or an ad
        include_comments=False,
        include_tables=False,
        include_images=False,
        include_links=False,
        with_metadata=True,
        date_extraction_params={"extensive_search": False},  # dates from markup only: fast, no dateparser warm-up
        prune_xpath=list(PRUNE_XPATH),
    )
    if document is None:
        return Article(title=None, text="")
    fields = document if isinstance(document, dict) else document.as_dict()
    return Article(title=_clean(fields.get("title")), text=fields.get("text") or "", date=_clean(fields.get("date")))


def _from_text(page: Page) -> Article:
    text = _decode(page.body, page.charset)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    title = first if first and len(first) <= 200 and not is_candidate(first) else None
    return Article(title=title, text=text)


def _decode(body: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):  # an unknown charset name: fall back to UTF-8
            encoding = codecs.lookup(charset).name
    return body.decode(encoding, errors="replace")


def _clean(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None
