"""The guarded fetcher against the local server (no Redis): every failure has a kind and a reason.

Addresses that must never be contacted (10.0.0.1 and names resolving to it) are only ever given to a fetcher
whose resolver is faked and whose transport fails the test if it is used: no packet can leave this machine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import attrs
import httpx
import pytest

from hive_plugin_scrape.fetch import HostGate, ScrapeError, fetch, network_reason, parse_retry_after
from hive_plugin_scrape.settings import ScrapeSettings

from scrape_helpers import TEST_SETTINGS, ArticleServer


@pytest.fixture
def settings() -> ScrapeSettings:
    return ScrapeSettings.from_mapping(TEST_SETTINGS)


async def failure(url: str, settings: ScrapeSettings, **options: Any) -> ScrapeError:
    with pytest.raises(ScrapeError) as caught:
        await fetch(url, settings, **options)
    return caught.value


class Untouchable(httpx.AsyncBaseTransport):
    """A transport that fails the test when anything is sent through it."""

    def __init__(self) -> None:
        self.used = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.used = True
        raise AssertionError(f"a request was sent to {request.url} (Host: {request.headers.get('host')})")


def fake_dns(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


# --------------------------------------------------------------------------------------------------
# Each way a fetch fails
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "reason", "transient"),
    [
        ("/missing", "http_status", "HTTP 404 Not Found", False),
        ("/unavailable", "http_status", "HTTP 503 Service Unavailable", True),
        ("/slow", "timeout", "the server sent nothing for 0.5s", True),
        ("/huge", "too_large", "over the 300000-byte limit; stopped reading", False),
        ("/huge-declared", "too_large", "the body is 50000000 bytes, over the 300000-byte limit", False),
        ("/binary", "not_html", "content type application/octet-stream is not HTML or plain text", False),
        ("/fake-html", "binary", "the body is binary data, not text/html", False),
        ("/loop/a", "redirect_loop", "/loop/b redirects back to http://127.0.0.1:{port}/loop/a", False),
        ("/redirect?to=ftp://files.example/a", "invalid_url", "redirect to 'ftp://files.example/a' refused", False),
    ],
)
async def test_each_failure_has_a_kind_and_a_reason(
    server: ArticleServer, settings: ScrapeSettings, path: str, kind: str, reason: str, transient: bool
) -> None:
    # When a URL of the local server that misbehaves in one way is fetched
    started = time.monotonic()
    error = await failure(server.url(path), settings)
    # Then the error names the kind and the reason, says whether a retry could help, and came quickly
    assert (error.kind, error.transient) == (kind, transient), error
    assert reason.format(port=server.port) in error.reason
    assert time.monotonic() - started < 2.5


async def test_the_huge_body_is_not_read_to_the_end(server: ArticleServer, settings: ScrapeSettings) -> None:
    # Given a page of ~13 MB and a 300 kB cap, When it is fetched, Then reading stops early (well under a second)
    started = time.monotonic()
    assert (await failure(server.url("/huge"), settings)).kind == "too_large"
    assert time.monotonic() - started < 1.0


async def test_a_trickling_server_is_cut_off_by_the_total_timeout(
    server: ArticleServer, settings: ScrapeSettings
) -> None:
    # Given a server that sends a byte every 0.2 s (never idle for the 0.5 s read timeout)
    quick = attrs.evolve(settings, total_timeout=1.0)
    started = time.monotonic()
    error = await failure(server.url("/drip"), quick)
    # Then the whole exchange is cut at total_timeout
    assert error.kind == "timeout" and "within 1s" in error.reason
    assert time.monotonic() - started < 2.0


async def test_redirects_are_followed_one_hop_at_a_time_up_to_the_limit(
    server: ArticleServer, settings: ScrapeSettings
) -> None:
    page = await fetch(server.url("/moved"), settings)
    assert (page.url, page.final_url) == (server.url("/moved"), server.url("/en/moved-here"))
    assert page.redirects == (server.url("/en/moved-here"),)
    error = await failure(server.url("/moved"), attrs.evolve(settings, max_redirects=0))
    assert error.kind == "too_many_redirects"


async def test_requests_carry_the_user_agent_and_plain_text_is_accepted(
    server: ArticleServer, settings: ScrapeSettings
) -> None:
    page = await fetch(server.url("/notes.txt"), settings)
    assert (page.media_type, page.charset) == ("text/plain", "utf-8")
    assert server.user_agents == {settings.user_agent}
    assert settings.user_agent.startswith("hive-plugin-scrape/")


# --------------------------------------------------------------------------------------------------
# The SSRF guard
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_without_the_allow_list(server: ArticleServer, host: str) -> None:
    # Given default settings (no allow_hosts), When the local server is fetched by address or by name
    error = await failure(f"http://{host}:{server.port}/en/bees", ScrapeSettings(politeness_delay=0))
    # Then it is refused before any request is made
    assert error.kind == "blocked" and "non-public address" in error.reason
    assert server.count() == 0


async def test_a_private_address_is_refused_before_any_connection() -> None:
    transport = Untouchable()
    error = await failure("http://10.0.0.1/admin", ScrapeSettings(), transport=transport)
    assert (error.kind, error.transient) == ("blocked", False)
    assert "refused 10.0.0.1: a non-public address" in error.reason
    assert not transport.used


async def test_a_public_looking_name_resolving_to_a_private_address_is_refused() -> None:
    transport = Untouchable()
    dns = fake_dns({"metadata.example": ["169.254.169.254"], "mixed.example": ["93.184.216.34", "10.0.0.1"]})
    for url, address in (("http://metadata.example/latest", "169.254.169.254"), ("https://mixed.example/", "10.0.0.1")):
        error = await failure(url, ScrapeSettings(), resolver=dns, transport=transport)
        assert error.kind == "blocked" and f"(resolves to {address})" in error.reason
    assert not transport.used


async def test_every_redirect_hop_is_vetted() -> None:
    # Given a public site that redirects to a name resolving to a private address
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(302, headers={"Location": "http://intranet.example/secrets"})

    dns = fake_dns({"news.example": ["93.184.216.34"], "intranet.example": ["10.0.0.1"]})
    # When it is fetched
    error = await failure("https://news.example/story", ScrapeSettings(politeness_delay=0), resolver=dns,
                          transport=httpx.MockTransport(answer))
    # Then the hop is refused: only the first, public request was ever sent
    assert error.kind == "blocked"
    assert error.reason.startswith("redirect to http://intranet.example/secrets: refused intranet.example")
    assert [str(r.url) for r in sent] == ["https://93.184.216.34/story"]


async def test_the_request_goes_to_the_vetted_address_with_the_original_host_name() -> None:
    # Given a name resolving to a public address (a second lookup could answer otherwise: DNS rebinding)
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html><p>Hi.</p></html>")

    dns = fake_dns({"news.example": ["93.184.216.34"]})
    await fetch("https://news.example:8443/a?b=1", ScrapeSettings(politeness_delay=0), resolver=dns,
                transport=httpx.MockTransport(answer))
    # Then the connection is pinned to the vetted address, while Host and TLS name stay the site's
    (request,) = sent
    assert str(request.url) == "https://93.184.216.34:8443/a?b=1"
    assert request.headers["host"] == "news.example:8443"
    assert request.extensions["sni_hostname"] == "news.example"


async def test_the_allow_list_admits_a_loopback_site_but_not_its_neighbours(server: ArticleServer) -> None:
    admitted = ScrapeSettings(allow_hosts=("127.0.0.1",), politeness_delay=0)
    assert (await fetch(server.url("/en/bees"), admitted)).status_code == 200
    # A redirect to another loopback address (nothing listens there) is refused on that hop
    error = await failure(server.url(f"/redirect?to=http://127.0.0.2:{server.port}/en/bees"), admitted)
    assert error.kind == "blocked" and "redirect to http://127.0.0.2" in error.reason
    assert server.count("/en/") == 1


# --------------------------------------------------------------------------------------------------
# Politeness: per host, per process
# --------------------------------------------------------------------------------------------------


async def test_a_host_gate_limits_concurrency_and_spaces_request_starts() -> None:
    gate = HostGate(concurrency=2)
    running, peak, starts = 0, 0, []

    async def request(delay: float) -> None:
        nonlocal running, peak
        async with gate.slot(delay):
            starts.append(time.monotonic())
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1

    await asyncio.gather(*(request(0.0) for _ in range(6)))
    assert peak == 2
    starts.clear()
    await asyncio.gather(*(request(0.1) for _ in range(3)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.09 for gap in gaps), gaps


async def test_fetches_to_one_host_are_spaced_by_the_politeness_delay(server: ArticleServer) -> None:
    polite = ScrapeSettings.from_mapping({**TEST_SETTINGS, "politeness_delay": 0.15})
    await asyncio.gather(*(fetch(server.url(f"/en/bees?n={i}"), polite) for i in range(3)))
    gaps = [b - a for a, b in itertools.pairwise(server.arrivals)]
    assert len(gaps) == 2 and all(gap >= 0.1 for gap in gaps), gaps  # 0.15 s, less network jitter


# --------------------------------------------------------------------------------------------------
# Retry-After, resets, compression (issue 21 item 6)
# --------------------------------------------------------------------------------------------------


async def test_retry_after_holds_the_host_off_for_every_later_request(server: ArticleServer) -> None:
    settings = ScrapeSettings.from_mapping({**TEST_SETTINGS, "max_retry_after": 30})
    # Given a server answering 429 with Retry-After: 1
    error = await failure(server.url("/busy?after=1"), settings)
    assert (error.kind, error.transient, error.retry_after) == ("http_status", True, 1.0)
    assert "Retry-After 1s" in error.reason and "left alone for 1s" in error.reason
    # When the next page of that host is fetched, Then it is not requested before the second is up
    await fetch(server.url("/en/bees"), settings)
    assert server.arrivals[1] - server.arrivals[0] >= 0.9


async def test_retry_after_is_capped(server: ArticleServer) -> None:
    settings = ScrapeSettings.from_mapping({**TEST_SETTINGS, "max_retry_after": 0.2})
    error = await failure(server.url("/busy?after=3600"), settings)
    assert "left alone for 0.2s" in error.reason
    started = time.monotonic()
    await fetch(server.url("/en/bees"), settings)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 5 ", 5.0), ("Sun, 06 Dec 2026 05:01:00 GMT", 60.0), ("Sun, 06 Dec 2026 04:00:00 GMT", 0.0),
    ("soon", None), ("", None), (None, None), ("-3", None),
])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


async def test_a_connection_reset_says_so(server: ArticleServer, settings: ScrapeSettings) -> None:
    error = await failure(server.url("/reset"), settings)
    assert error.kind in ("network", "connect") and error.transient
    assert error.reason.split(":", 1)[1].strip(), error.reason  # a message after the exception's name
    assert "reset" in error.reason.lower() or "closed" in error.reason.lower() or "disconnect" in error.reason.lower()


async def test_brotli_sent_unasked_is_decoded(server: ArticleServer, settings: ScrapeSettings) -> None:
    page = await fetch(server.url("/brotli"), settings)
    assert page.body.startswith(b"<!") or b"<html" in page.body[:200].lower()


async def test_an_encoding_that_cannot_be_decoded_is_named(server: ArticleServer, settings: ScrapeSettings) -> None:
    error = await failure(server.url("/zstd"), settings)
    assert (error.kind, error.reason) == (
        "unsupported_encoding", "the body is compressed with Zstandard (zstd), which cannot be decoded here")


def test_a_network_error_without_a_message_is_explained() -> None:
    # httpcore raises ReadError("") when the peer resets a TLS or keep-alive connection: the reason was "ReadError: "
    bare = httpx.ReadError("")
    bare.__cause__ = ConnectionResetError()
    assert network_reason(bare) == "ReadError: the connection was reset or closed while reading the answer"
    wrapped = httpx.ReadError("")
    wrapped.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert network_reason(wrapped) == "ReadError: [Errno 104] Connection reset by peer"
