"""Realistic article pages (English and Polish, with navigation, ads and comments): summaries quote the article only."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_plugin_scrape.scraper import scrape
from hive_plugin_scrape.settings import ScrapeSettings
from hive_plugin_scrape.summarise import normalise_space
from hive_plugin_scrape.urls import parse_payload

from scrape_helpers import EN_PAGE, PL_PAGE, TEST_SETTINGS, ArticleServer, article_body, boilerplate

ARTICLES = [
    ("/en/bees", EN_PAGE, "en", "Rooftop hives are changing how cities think about bees"),
    ("/pl/ogrody", PL_PAGE, "pl", "Ogrody deszczowe zatrzymują wodę w mieście"),
]


def test_the_test_pages_surround_the_article_with_tempting_boilerplate() -> None:
    # The comments and ads talk about the article's subject, so a leak would be picked by the ranking
    assert "bees and bumblebees doubled within one summer" in boilerplate(EN_PAGE)
    assert "Woda z dachów w ogrodzie deszczowym" in boilerplate(PL_PAGE)
    assert "Zamów projekt ogrodu deszczowego" in boilerplate(PL_PAGE)  # an ad inside the article's div


@pytest.mark.parametrize(("path", "page", "language", "title"), ARTICLES)
@pytest.mark.parametrize("count", [1, 3, 5])
async def test_every_summary_sentence_is_from_the_article_body_and_none_from_the_boilerplate(
    server: ArticleServer, path: str, page: Path, language: str, title: str, count: int
) -> None:
    # Given an article page full of navigation, ads and comments, When it is scraped for N sentences
    result = await scrape(parse_payload({"url": server.url(path), "sentences": count}),
                          ScrapeSettings.from_mapping(TEST_SETTINGS))
    # Then the title and language are found and the summary is N sentences of the article body itself
    assert (result["title"], result["language"]) == (title, language)
    assert len(result["summary"]) == count
    body, noise = article_body(page), boilerplate(page)
    for sentence in result["summary"]:
        assert normalise_space(sentence) in body, sentence
        assert normalise_space(sentence) not in noise, sentence
    # in the article's order
    positions = [body.index(normalise_space(s)) for s in result["summary"]]
    assert positions == sorted(positions)


async def test_a_given_language_is_used_and_reported(server: ArticleServer) -> None:
    settings = ScrapeSettings.from_mapping(TEST_SETTINGS)
    result = await scrape(parse_payload({"url": server.url("/pl/ogrody"), "language": "Polish"}), settings)
    assert result["language"] == "pl" and len(result["summary"]) == 3


async def test_a_plain_text_page_is_summarised_with_its_first_line_as_title(server: ArticleServer) -> None:
    result = await scrape(parse_payload({"url": server.url("/notes.txt"), "sentences": 2}),
                          ScrapeSettings.from_mapping(TEST_SETTINGS))
    assert result["title"] == "Field notes"
    assert result["media_type"] == "text/plain"
    assert len(result["summary"]) == 2
