"""``hive scrape URL...``: the command a plugin adds through register_commands, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hive_framework import HiveConfig
from hive_framework.models import NodeInfo
from redis.asyncio import Redis

from hive_plugin_scrape.cli import no_scraper_online

from scrape_helpers import ArticleServer

pytestmark = pytest.mark.redis


async def hive_cli(config: HiveConfig, toml: Path, *args: str) -> tuple[int, str, str]:
    """Run ``python -m hive_framework ARGS`` against the test hive; returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env.update(config.to_env())
    env["HIVE_CONFIG"] = str(toml)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hive_framework", "--log-level", "warning", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_hive_scrape_prints_a_digest_and_fails_when_a_url_failed(
    hive_config: HiveConfig, scrape_toml: Path, run_spore: Any, server: ArticleServer
) -> None:
    # Given a spore serving the test hive
    await run_spore(name="cli-spore")
    good, missing = server.url("/en/bees"), server.url("/missing")

    # When `hive scrape --json` runs on a good URL and a missing one
    code, out, err = await hive_cli(hive_config, scrape_toml, "scrape", good, missing, "--sentences", "2", "--json")

    # Then it prints the digest as JSON and exits 1 because one URL failed
    assert code == 1, err
    digest = json.loads(out)
    assert list(digest) == [good, missing]
    assert digest[good]["title"] == "Rooftop hives are changing how cities think about bees"
    assert len(digest[good]["summary"]) == 2
    assert digest[missing] == {"error": "HTTP 404 Not Found", "error_kind": "http_status"}

    # And as a table, with only good URLs, it exits 0
    code, out, err = await hive_cli(hive_config, scrape_toml, "scrape", server.url("/pl/ogrody"), "-s", "1")
    assert code == 0, err
    assert "✓ " + server.url("/pl/ogrody") in out
    assert "Ogrody deszczowe zatrzymują wodę w mieście" in out
    assert "1 URL(s): 1 summarised, 0 failed" in out


async def test_hive_scrape_refuses_a_bad_url_before_submitting(hive_config: HiveConfig, scrape_toml: Path) -> None:
    code, _, err = await hive_cli(hive_config, scrape_toml, "scrape", "ftp://example.com/file")
    assert code == 2
    assert "only http and https URLs can be scraped" in err
    assert "Traceback" not in err


async def test_hive_scrape_reports_urls_no_spore_picked_up(hive_config: HiveConfig, scrape_toml: Path) -> None:
    # Given no spore at all and --queue, When the wait times out, Then the URL is reported pending, exit code 1
    code, out, err = await hive_cli(hive_config, scrape_toml, "scrape", "https://example.com/", "--json",
                                    "--wait-timeout", "0.5", "--queue")
    assert code == 1, err
    assert json.loads(out)["https://example.com/"]["error_kind"] == "pending"


async def test_hive_scrape_without_a_spore_says_so_at_once(hive_config: HiveConfig, scrape_toml: Path) -> None:
    # Given no spore online, When `hive scrape` runs with the default 300 s wait
    started = time.monotonic()
    code, out, err = await hive_cli(hive_config, scrape_toml, "scrape", "https://example.com/")
    # Then it stops at once, saying why, and submits nothing
    assert time.monotonic() - started < 30
    assert code == 1 and out == ""
    assert "no spore is online" in err and "nothing submitted" in err
    redis = Redis.from_url(hive_config.effective_redis_url())
    try:
        assert await redis.keys(f"{hive_config.key_prefix}:task:*") == []
        assert await redis.keys(f"{hive_config.key_prefix}:job*") == []
    finally:
        await redis.aclose()


def test_a_spore_without_the_plugin_or_paused_is_not_enough() -> None:
    def node(task_types: list[str], paused: bool = False) -> NodeInfo:
        return NodeInfo(node_id="n", node_name="n", host="h", pid=1, task_types=task_types, paused=paused)

    assert no_scraper_online([node(["web_scraping"])]) is None
    assert "none runs web_scraping" in str(no_scraper_online([node(["other"])]))
    assert "paused" in str(no_scraper_online([node(["web_scraping"], paused=True)]))


async def test_a_bad_plugin_section_is_one_clear_line(hive_config: HiveConfig, tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[plugins.scrape]\nread_timout = 3\n", encoding="utf-8")
    code, _, err = await hive_cli(hive_config, toml, "scrape", "https://example.com/")
    assert code == 78  # EX_CONFIG, as every configuration mistake
    assert "unknown setting 'read_timout' in [plugins.scrape]" in err
    assert "Traceback" not in err
