"""Main text and title of a page, with trafilatura (why trafilatura: see the plugin's README)."""

from __future__ import annotations

import re
from typing import Any

import attrs

from .charset import Decoded, decode_body
from .fetch import Page, ScrapeError
from .summarise import is_candidate, split_sentences

#: Fewer candidate sentences than this and the page is read again with its tables unwrapped (see _from_html).
MIN_SENTENCES = 3
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")

#: Whole class or id tokens that name an ad slot, in English and Polish ("reklama"). Tokens, never substrings:
#: ``contains(@class, 'advert')`` also matched WordPress's ``category-native-advertising`` on the page wrapper
#: (or ``<body>``) and deleted whole articles, with no measurable gain in boilerplate removed.
AD_TOKENS = ("ad", "ads", "advert", "adverts", "advertisement", "advertisements", "sponsored", "reklama", "reklamy")
#: Token prefixes of ad slots: ``ad-inline``, ``ads-top``, ``advert-box``, ``reklama-srodek``.
AD_TOKEN_PREFIXES = ("ad-", "ads-", "advert-", "reklama-")


def _token_test(attribute: str) -> str:
    value = f"concat(' ', normalize-space(translate(@{attribute}, 'ABDEIMNOPRSTVKLY', 'abdeimnoprstvkly')), ' ')"
    exact = [f"contains({value}, ' {token} ')" for token in AD_TOKENS]
    prefixed = [f"contains({value}, ' {prefix}')" for prefix in AD_TOKEN_PREFIXES]
    return " or ".join(exact + prefixed)


#: Ad containers trafilatura's rules miss. Never a document or article wrapper, nor anything holding an article.
PRUNE_XPATH = (
    "//*[not(self::html or self::body or self::main or self::article) and not(.//article)"
    f" and ({_token_test('class')} or {_token_test('id')})]",
)


@attrs.frozen(kw_only=True)
class Article:
    title: str | None
    text: str
    date: str | None = None
    charset: Decoded | None = None


def extract_article(page: Page) -> Article:
    """The article in ``page``: HTML through trafilatura, plain text as it is; :class:`ScrapeError` if empty."""
    article = _from_html(page) if page.is_html else _from_text(page)
    if not article.text.strip():
        raise ScrapeError("no_text", "no article text found on the page")
    return article


def _from_html(page: Page) -> Article:
    """The article through trafilatura; a page laid out in tables is read again with its tables as plain blocks.

    Tables are left out at first (a data table is no summary material, and trafilatura renders a layout table's
    cells as one ``| nav | title text |`` line). When that leaves fewer than :data:`MIN_SENTENCES` sentences,
    the page may be laid out in tables (old news sites are): its tables, rows and cells become ``<div>`` s and
    the page is extracted again; the version with more sentences wins.
    """
    decoded = decode_body(page.body, page.charset, is_html=True)
    article = _extract(decoded.text, page.final_url, decoded)
    if _sentence_count(article.text) < MIN_SENTENCES:
        tree = _parse(decoded.text)
        if tree is not None and _unwrap_tables(tree):
            unwrapped = _extract(tree, page.final_url, decoded)
            if _sentence_count(unwrapped.text) > _sentence_count(article.text):
                return unwrapped
    return article


def _extract(content: Any, url: str, decoded: Decoded) -> Article:
    import trafilatura  # imported on first use: `hive --help` and spores start without it

    document = trafilatura.bare_extraction(
        content,
        url=url,
        favor_precision=True,  # rather lose a paragraph than summarise a comment or an ad
        include_comments=False,
        include_tables=False,  # see _from_html: a layout table is unwrapped instead
        include_images=False,
        include_links=False,
        with_metadata=True,
        date_extraction_params={"extensive_search": False},  # dates from markup only: fast, no dateparser warm-up
        prune_xpath=list(PRUNE_XPATH),
    )
    if document is None:
        return Article(title=None, text="", charset=decoded)
    fields = document if isinstance(document, dict) else document.as_dict()
    return Article(
        title=_clean(fields.get("title")), text=fields.get("text") or "", date=_clean(fields.get("date")),
        charset=decoded,
    )


def _sentence_count(text: str) -> int:
    return sum(1 for sentence in split_sentences(text) if is_candidate(sentence))


def _parse(text: str) -> Any:
    import lxml.html
    from lxml.etree import ParserError

    try:
        return lxml.html.document_fromstring(_XML_DECLARATION.sub("", text, count=1))
    except (ParserError, ValueError):
        return None


def _unwrap_tables(tree: Any) -> bool:
    """Turn every table element of ``tree`` into a ``<div>``; False when there was none."""
    found = False
    for element in tree.iter("table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption"):
        element.tag = "div"
        found = True
    return found


def _from_text(page: Page) -> Article:
    decoded = decode_body(page.body, page.charset, is_html=False)
    text = decoded.text
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    title = first if first and len(first) <= 200 and not is_candidate(first) else None
    return Article(title=title, text=text, charset=decoded)


def _clean(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None
