"""The seed's scenario 1 on real spore processes: "fetch and summarise 20 articles from different sites"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive, ParallelSkill
from hive_framework.testing import async_wait_until

from hive_plugin_scrape.summarise import normalise_space

from scrape_helpers import EN_PAGE, PL_PAGE, ArticleServer, article_body

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_twenty_articles_from_five_sites_are_summarised_by_several_spore_processes(
    hive: Hive, spore_processes: Any, scrape_toml: Path, make_servers: Any
) -> None:
    # Given five "sites" (local servers) with four articles each, English and Polish
    sites: list[ArticleServer] = make_servers(5)
    urls = [site.url(f"/{lang}/article-{n}") for site in sites for n, lang in enumerate(("en", "pl", "en", "pl"))]
    # and three spore processes, which get the [plugins.scrape] settings through HIVE_CONFIG
    for name in ("spore-a", "spore-b", "spore-c"):
        spore_processes(name, extra_env={"HIVE_CONFIG": str(scrape_toml)})
    await async_wait_until(lambda: _online(hive, 3), timeout=30, what="3 spore processes online")

    # When the seed's code runs, unchanged but for the URLs
    result = await ParallelSkill(hive.broker).map_reduce(
        task_description="Pobierz artykuł i stresuść do 3 zdań",
        items=json.dumps(urls),
        priority="high_priority",
    )

    # Then all 20 were claimed by web_scraping, completed, and summarised in 3 article sentences each
    report = json.loads(result)
    assert report["task_type"] == "web_scraping", report
    assert report["summary"]["completed"] == 20 and report["summary"]["success_rate"] == 1.0
    digest = report["reduced"]
    assert list(digest) == urls
    bodies = {"en": article_body(EN_PAGE), "pl": article_body(PL_PAGE)}
    for url, page in digest.items():
        assert "error" not in page, (url, page)
        assert len(page["summary"]) == 3
        body = bodies["en" if "/en/" in url else "pl"]
        assert all(normalise_space(s) in body for s in page["summary"])
    # by more than one process, each site asked once per article
    assert len({r["node"] for r in report["results"]}) >= 2
    assert [site.count() for site in sites] == [4] * 5


async def _online(hive: Hive, count: int) -> bool:
    return len(await hive.nodes()) >= count
