"""The opt-in ``scrape`` tool: URLs in, a digest out, fetched by hive-plugin-scrape's task type on a spore."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hive_framework import Hive

from mcp_helpers import error_json, stdio_session, structured

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: hive-plugin-scrape's own English test article (next to this plugin in the repository).
ARTICLE = Path(__file__).parents[2] / "scrape" / "tests" / "pages" / "en_bees.html"


@pytest.fixture
def site() -> Iterator[str]:
    """A local web site: /en/bees is an article, anything else a 404."""
    if not ARTICLE.is_file():
        pytest.skip(f"no test article at {ARTICLE}")
    page = ARTICLE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            found = self.path == "/en/bees"
            body = page if found else b"<html><body>gone</body></html>"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


@pytest.fixture
def mcp_settings() -> dict[str, Any]:
    return {"enable": ["scrape"]}


@pytest.fixture
def other_plugin_settings() -> dict[str, dict[str, Any]]:
    return {"scrape": {"allow_hosts": ["127.0.0.1"], "politeness_delay": 0, "cache_ttl": 0}}


async def test_scrape_answers_a_digest_with_failures_named(
    hive: Hive, spores: Any, mcp_env: dict[str, str], tmp_path: Path, site: str
) -> None:
    pytest.importorskip("hive_plugin_scrape")
    await spores(1)
    async with stdio_session(mcp_env, tmp_path / "mcp.log") as client:
        refused = error_json(await client.call_tool("scrape", {"urls": ["ftp://127.0.0.1/file"]}))
        digest = structured(await client.call_tool(
            "scrape", {"urls": [f"{site}/en/bees", f"{site}/missing"], "sentences": 2}
        ))

    assert "http" in refused["error"] and sum((await hive.queue_stats()).values()) == 2
    pages = digest["pages"]
    assert list(pages) == [f"{site}/en/bees", f"{site}/missing"]
    assert len(pages[f"{site}/en/bees"]["summary"]) == 2 and pages[f"{site}/en/bees"]["title"]
    assert pages[f"{site}/missing"]["error_kind"] == "http_status", pages
    assert digest["summary"]["completed"] == 2
