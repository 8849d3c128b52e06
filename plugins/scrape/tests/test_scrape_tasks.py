"""The task type on a real Redis with in-process spores: per-item errors, retries, the cache and the digest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hive_framework import Hive, ParallelSkill

from hive_plugin_scrape import DIGEST, TASK_TYPE

from scrape_helpers import ArticleServer

pytestmark = pytest.mark.redis


async def map_reduce(hive: Hive, description: str, items: list[Any], **options: Any) -> dict[str, Any]:
    """The seed's call: ParallelSkill.map_reduce with a JSON string of items, decoded."""
    report: dict[str, Any] = json.loads(
        await ParallelSkill(hive.broker).map_reduce(description, json.dumps(items), wait_timeout=60, **options)
    )
    assert "error" not in report, report
    return report


async def test_failing_urls_give_per_item_errors_while_the_others_succeed(
    hive: Hive, run_spore: Any, server: ArticleServer
) -> None:
    # Given a spore and a job mixing two good articles with one URL per way of failing
    await run_spore(name="scraper", concurrency=8)
    good = [server.url("/en/bees"), server.url("/pl/ogrody")]
    bad = {
        server.url("/missing"): ("http_status", "HTTP 404 Not Found"),
        server.url("/slow"): ("timeout", "the server sent nothing for 0.5s"),
        server.url("/huge"): ("too_large", "over the 300000-byte limit"),
        server.url("/binary"): ("not_html", "application/octet-stream is not HTML"),
        server.url("/loop/a"): ("redirect_loop", "redirect loop"),
        server.url("/unavailable"): ("http_status", "HTTP 503 Service Unavailable"),
        f"http://127.0.0.2:{server.port}/en/bees": ("blocked", "refused 127.0.0.2: a non-public address"),
        server.url(f"/redirect?to=http://127.0.0.2:{server.port}/en/bees"): ("blocked", "redirect to http://127.0.0.2"),
    }
    urls = [good[0], *bad, good[1]]

    # When the seed's map_reduce runs on them without naming a task type
    report = await map_reduce(hive, "Fetch each article and summarise it in 2 sentences", urls)

    # Then the URLs were claimed by web_scraping and reduced by its default reducer, the digest
    assert (report["task_type"], report["reducer"]) == (TASK_TYPE, DIGEST)
    digest = report["reduced"]
    assert list(digest) == urls
    # the good articles are summarised in 2 sentences
    for url in good:
        assert digest[url]["title"] and len(digest[url]["summary"]) == 2
    # and every bad one is listed with its kind and reason
    for url, (kind, reason) in bad.items():
        assert digest[url]["error_kind"] == kind, (url, digest[url])
        assert reason in digest[url]["error"], (url, digest[url])
    # per item as well, in input order
    assert [r["item"] for r in report["results"]] == urls
    assert all(r["status"] == "completed" for r in report["results"])
    assert report["summary"]["total_tasks"] == len(urls)
    # Transient failures were retried (1 + max_retries attempts); definitive ones were tried once
    assert server.count("/slow") == server.count("/unavailable") == 3
    assert server.count("/missing") == server.count("/binary") == 1
    # and nothing ever reached 127.0.0.2
    assert set(server.hosts()) == {f"127.0.0.1:{server.port}"}


async def test_a_cached_result_is_returned_without_an_http_request(
    hive: Hive, run_spore: Any, server: ArticleServer
) -> None:
    # Given a spore and an article scraped once
    await run_spore(name="scraper")
    url = server.url("/en/bees")
    first = await hive.run(TASK_TYPE, {"url": url, "sentences": 2}, timeout=30)
    assert first["cached"] is False and server.count("/en/bees") == 1

    # When the same (url, sentences) is scraped again, through map-reduce and directly
    report = await map_reduce(hive, "Summarise in 2 sentences", [url])
    again = await hive.run(TASK_TYPE, {"url": url + "#comments", "sentences": 2}, timeout=30)

    # Then the cached result comes back, marked as such, and the server saw no new request
    assert report["results"][0]["result"]["summary"] == first["summary"] == again["summary"]
    assert report["results"][0]["result"]["cached"] is True and again["cached"] is True
    assert server.count("/en/bees") == 1
    # A different sentence count is a different result: fetched anew
    three = await hive.run(TASK_TYPE, {"url": url, "sentences": 3}, timeout=30)
    assert len(three["summary"]) == 3 and server.count("/en/bees") == 2
    # Failures are not cached: a 404 is asked again
    for _ in range(2):
        assert (await hive.run(TASK_TYPE, {"url": server.url("/missing")}, timeout=30))["error_kind"] == "http_status"
    assert server.count("/missing") == 2


async def test_the_alias_dict_items_and_bad_payloads(hive: Hive, run_spore: Any, server: ArticleServer) -> None:
    await run_spore(name="scraper")
    # The alias "scrape" runs the same handler
    result = await hive.run("scrape", {"url": server.url("/pl/ogrody"), "sentences": 1}, timeout=30)
    assert result["language"] == "pl" and len(result["summary"]) == 1
    # Dict items with a "url" are claimed too, and their own settings are kept
    report = await map_reduce(hive, "", [{"url": server.url("/en/bees"), "sentences": 4, "language": "en"}])
    assert report["task_type"] == TASK_TYPE and len(report["results"][0]["result"]["summary"]) == 4
    # A payload that makes no sense is an error record at once (no retries, no request)
    before = server.count()
    bad = await hive.run(TASK_TYPE, {"url": "file:///etc/passwd"}, timeout=30)
    assert bad == {"url": "file:///etc/passwd", "error": bad["error"], "error_kind": "invalid_payload"}
    assert "only http and https" in bad["error"] and server.count() == before


async def test_the_digest_is_keyed_by_the_urls_as_given(hive: Hive, run_spore: Any, server: ArticleServer) -> None:
    # Given URLs spelled the ways people write them: a fragment, no trailing slash, upper-case host
    await run_spore(name="scraper", concurrency=4)
    base = server.url("")
    urls = [server.url("/en/bees#comments"), f"HTTP://127.0.0.1:{server.port}", server.url("/en/bees")]
    # When they are summarised
    report = await map_reduce(hive, "summarise in 1 sentence", urls)
    # Then reduced[url] works for each URL exactly as given
    digest = report["reduced"]
    assert list(digest) == urls
    assert digest[urls[0]]["summary"] and digest[urls[2]]["summary"]
    assert digest[urls[1]]["error_kind"] == "http_status"  # "/" is the server's 404
    # and a result names its URL as given beside the canonical one
    results = {r["item"]: r["result"] for r in report["results"]}
    assert results[urls[0]]["url"] == urls[0]
    assert results[urls[0]]["canonical_url"] == base + "/en/bees"
