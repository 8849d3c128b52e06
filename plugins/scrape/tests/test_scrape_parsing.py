"""The pure parts, property-tested: URLs, payloads, claims, settings, the address guard and the summariser."""

from __future__ import annotations

import codecs
import functools
import ipaddress
import string
from typing import Any

import httpx
import pytest
from hive_framework import ConfigError, HiveConfig, Kernel
from hypothesis import example, given
from hypothesis import strategies as st

from hive_plugin_scrape import DIGEST, TASK_TYPE
from hive_plugin_scrape.charset import decode_body
from hive_plugin_scrape.fetch import ScrapeError, check_addresses, is_public, parse_retry_after
from hive_plugin_scrape.settings import ScrapeSettings
from hive_plugin_scrape.summarise import is_candidate, split_sentences, strip_bullet, summarise
from hive_plugin_scrape.urls import (
    DEFAULT_SENTENCES,
    MAX_SENTENCES,
    InvalidPayload,
    ScrapeRequest,
    is_url_item,
    parse_payload,
    parse_url,
    sentences_in,
)

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
paths = st.text(alphabet=string.ascii_letters + string.digits + "/-_.~%", max_size=40).map(lambda p: "/" + p)
@functools.cache
def kernel() -> Kernel:
    """One kernel for the property tests (building one per example would load the entry points each time)."""
    return Kernel(HiveConfig())


web_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{'' if port is None else f':{port}'}{path}",
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    hosts,
    st.none() | st.integers(1, 65535),
    paths,
)


# --------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------


@given(web_urls)
def test_web_urls_parse_to_a_canonical_form_that_is_stable_and_httpx_accepts(url: str) -> None:
    # Given an http(s) URL, When it is parsed
    canonical = parse_url(url)
    # Then the canonical form is http(s), idempotent and a URL httpx can request
    assert canonical.startswith(("http://", "https://"))
    assert parse_url(canonical) == canonical
    assert httpx.URL(canonical).host


@given(st.text(max_size=60) | st.from_regex(r"[a-z]{2,6}://[^\s]{0,30}", fullmatch=True))
@example("javascript:alert(1)")
@example("ftp://example.com/file")
@example("http://")
@example("http://user:secret@example.com/")
@example("http://exa mple.com/")
@example("http://[::1")
@example("http://example.com:99999/")
@example("//example.com/a")
def test_any_text_either_parses_or_is_refused_with_invalid_payload(text: str) -> None:
    # Given any text, When it is parsed as a URL
    try:
        canonical = parse_url(text)
    except InvalidPayload as exc:
        # Then it is refused with a reason
        assert str(exc)
        return
    # or it is a canonical http(s) URL
    assert canonical.startswith(("http://", "https://"))
    assert parse_url(canonical) == canonical


@pytest.mark.parametrize(
    ("given_url", "canonical"),
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("https://example.com:443/a?b=1#frag", "https://example.com/a?b=1"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("http://[::1]:8000/", "http://[::1]:8000/"),
        ("  https://bücher.de/ ", "https://bücher.de/"),
    ],
)
def test_canonical_forms(given_url: str, canonical: str) -> None:
    assert parse_url(given_url) == canonical


# --------------------------------------------------------------------------------------------------
# Payloads and claims
# --------------------------------------------------------------------------------------------------


@given(web_urls, st.none() | st.integers(1, MAX_SENTENCES), st.sampled_from(["auto", "en", "pl", "Polish", "EN"]))
def test_payloads_name_the_url_directly_or_as_a_map_reduce_item(url: str, sentences: int | None, language: str) -> None:
    extra: dict[str, Any] = {"language": language} if language != "auto" else {}
    if sentences is not None:
        extra["sentences"] = sentences
    direct = parse_payload({"url": url, **extra})
    as_item = parse_payload({"item": url, "description": "Fetch it", **extra})
    assert direct == as_item
    assert direct.url == parse_url(url)
    assert direct.sentences == (sentences or DEFAULT_SENTENCES)
    assert direct.language in {"auto", "English", "Polish"}


def test_the_seeds_description_sets_the_sentence_count() -> None:
    # Given the seed's scenario: plain URL strings and "Pobierz artykuł i stresuść do 3 zdań"
    request = parse_payload({"item": "https://site1.com", "description": "Pobierz artykuł i stresuść do 2 zdań"})
    assert request == ScrapeRequest(url="https://site1.com/", sentences=2)
    assert sentences_in("Summarise each article in 5 sentences") == 5
    assert sentences_in("a 4-sentence summary") == 4
    assert sentences_in("Scrape articles") is None
    # An explicit count wins over the description
    assert parse_payload({"item": "https://a.pl", "description": "w 2 zdaniach", "sentences": 4}).sentences == 4


@given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=10) | st.booleans(),
                       max_size=4))
def test_any_payload_parses_or_is_refused_with_a_reason(payload: dict[str, Any]) -> None:
    try:
        request = parse_payload(payload)
    except InvalidPayload as exc:
        assert str(exc)
    else:
        assert 1 <= request.sentences <= MAX_SENTENCES


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, 'no "url"'),
        ({"url": "ftp://x"}, "only http and https"),
        ({"url": "https://a.com", "sentences": 0}, "from 1 to"),
        ({"url": "https://a.com", "sentences": True}, "whole number"),
        ({"url": "https://a.com", "language": "klingon"}, "unknown language"),
        ({"url": "https://a.com", "depth": 2}, "unknown payload key(s) depth"),
        (["https://a.com"], "must be a JSON object"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload: Any, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=None) as caught:
        parse_payload(payload)
    assert reason in str(caught.value)


@given(st.lists(web_urls | st.builds(lambda u: {"url": u, "sentences": 2}, web_urls), min_size=1, max_size=8))
def test_lists_of_urls_are_claimed_for_web_scraping(items: list[Any]) -> None:
    assert all(is_url_item(i) for i in items)
    assert kernel().claim("Fetch these", items) == TASK_TYPE


@given(st.lists(web_urls, max_size=5), st.lists(st.text(max_size=12) | st.integers() | st.none(), min_size=1,
                                                 max_size=3))
def test_a_list_with_anything_but_urls_is_not_claimed(urls: list[str], others: list[Any]) -> None:
    from hive_plugin_scrape import claim_items

    mixed = [*urls, *(o for o in others if not is_url_item(o))]
    if len(mixed) > len(urls):
        assert claim_items(description="", items=mixed, config=HiveConfig()) is None
    assert claim_items(description="", items=[], config=HiveConfig()) is None


def test_the_task_types_default_reducer_is_the_digest() -> None:
    assert kernel().task_types[TASK_TYPE].reducer == DIGEST
    assert kernel().task_types["scrape"].handler is kernel().task_types[TASK_TYPE].handler
    results = [
        {"url": "https://a.com/", "title": "A", "summary": ["One."], "language": "en"},
        {"url": "https://b.com/", "error": "HTTP 404 Not Found", "error_kind": "http_status"},
        "not a scrape result",
    ]
    assert kernel().reduce(DIGEST, results) == {
        "https://a.com/": {"title": "A", "summary": ["One."]},
        "https://b.com/": {"error": "HTTP 404 Not Found", "error_kind": "http_status"},
    }
    assert kernel().reduce(DIGEST, []) == {}
    assert kernel().reduce("collect", results) == results  # other reducers are not ours


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


def test_settings_come_from_the_plugins_scrape_section() -> None:
    config = HiveConfig(plugins={"scrape": {"allow_hosts": ["127.0.0.1", "intranet.example", "10.0.0.0/8"],
                                             "read_timeout": "2.5", "max_redirects": 3}})
    settings = ScrapeSettings.from_config(config)
    assert settings.read_timeout == 2.5 and settings.max_redirects == 3
    assert [str(n) for n in settings.allowed_networks] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert settings.allowed_names == ("intranet.example",)
    assert ScrapeSettings.from_config(HiveConfig()) == ScrapeSettings()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"alow_hosts": ["x"]}, "unknown setting 'alow_hosts' in [plugins.scrape]"),
        ({"read_timeout": 0}, "read_timeout must be > 0"),
        ({"read_timeout": "soon"}, "bad value for read_timeout"),
        ({"max_redirects": 2.5}, "expected a whole number"),
        ({"politeness_delay": True}, "expected a number"),
        ({"allow_hosts": 7}, "expected a list"),
        ({"allow_hosts": ["not a host/"]}, "neither a host name"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ScrapeSettings.from_mapping(section)
    assert message in str(caught.value)


# --------------------------------------------------------------------------------------------------
# The address guard (no network: addresses are given)
# --------------------------------------------------------------------------------------------------


@given(st.ip_addresses())
def test_an_address_is_admitted_only_when_public_or_allow_listed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    settings = ScrapeSettings()
    if is_public(address):
        assert check_addresses("example.com", [str(address)], settings) == [address]
    else:
        with pytest.raises(ScrapeError) as caught:
            check_addresses("example.com", [str(address)], settings)
        assert caught.value.kind == "blocked" and not caught.value.transient
    # An allow-listed network admits any address in it
    network = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
    assert check_addresses("h", [str(address)], ScrapeSettings(allow_hosts=(str(network),))) == [address]


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "::1",
     "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255"],
)
def test_private_loopback_link_local_and_other_non_global_addresses_are_refused(address: str) -> None:
    with pytest.raises(ScrapeError, match="non-public address"):
        check_addresses("internal.example", [address], ScrapeSettings())


def test_one_refused_address_refuses_the_host_and_allow_listed_names_admit_anything() -> None:
    with pytest.raises(ScrapeError, match=r"refused mixed.example \(resolves to 10.0.0.1\)"):
        check_addresses("mixed.example", ["93.184.216.34", "10.0.0.1"], ScrapeSettings())
    by_name = ScrapeSettings(allow_hosts=("intranet.example", "*.corp.example"))
    assert check_addresses("INTRANET.example.", ["10.0.0.1"], by_name)
    assert check_addresses("wiki.corp.example", ["10.1.2.3"], by_name)
    with pytest.raises(ScrapeError):
        check_addresses("corp.example.evil.com", ["10.1.2.3"], by_name)


# --------------------------------------------------------------------------------------------------
# Sentences and summaries
# --------------------------------------------------------------------------------------------------

sentence_words = st.text(alphabet=string.ascii_letters + "ąęłśżźćńó", min_size=1, max_size=10)
prose = st.lists(
    st.builds(
        lambda words, end: " ".join(words).capitalize() + end,
        st.lists(sentence_words, min_size=1, max_size=12),
        st.sampled_from([".", "!", "?", "...", '."']),
    ),
    min_size=1,
    max_size=25,
).map(" ".join)


@given(prose | st.text(max_size=300))
def test_sentences_are_slices_of_the_text_that_cover_all_of_it(text: str) -> None:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() and s in text for s in sentences)
    assert "".join("".join(s.split()) for s in sentences) == "".join(text.split())  # nothing lost


def test_abbreviations_initials_and_numbers_do_not_end_a_sentence() -> None:
    text = ("Dr. Maria Lindqvist met J. Smith at 10 a.m. on Main St. in the U.S. yesterday. "
            "W 2023 r. powstało ok. 140 ogrodów, m.in. przy ul. Długiej, np. przy szkołach. "
            "Prof. Nowak mówi: to działa! Czy na pewno? Tak.")
    assert split_sentences(text) == [
        "Dr. Maria Lindqvist met J. Smith at 10 a.m. on Main St. in the U.S. yesterday.",
        "W 2023 r. powstało ok. 140 ogrodów, m.in. przy ul. Długiej, np. przy szkołach.",
        "Prof. Nowak mówi: to działa!",
        "Czy na pewno?",
        "Tak.",
    ]


@given(prose, st.integers(1, 8), st.sampled_from([None, "English", "Polish"]))
def test_a_summary_is_at_most_n_of_the_texts_own_sentences_in_order(
    text: str, count: int, language: str | None
) -> None:
    summary = summarise(text, count, language)
    sentences = [strip_bullet(s) for s in split_sentences(text)]
    assert len(summary) <= count
    assert len(set(summary)) == len(summary)  # a repeated sentence is offered once
    remaining = iter(sentences)
    assert all(any(s == t for t in remaining) for s in summary)  # sentences of the text, in the text's order
    if len({s for s in sentences if is_candidate(s)}) >= count:
        assert len(summary) == count


# --------------------------------------------------------------------------------------------------
# Wire input of issue 21: Retry-After headers and bodies in any charset
# --------------------------------------------------------------------------------------------------


@given(st.text(max_size=60) | st.integers(0, 10**9).map(str))
@example("Wed, 21 Oct 2015 07:28:00 GMT")
@example("99999999999999999999999")
def test_any_retry_after_header_gives_none_or_a_non_negative_delay(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or seconds >= 0


@given(st.binary(max_size=400), st.none() | st.sampled_from(["utf-8", "iso-8859-1", "cp1250", "bogus", "UTF8"]),
       st.booleans())
def test_any_body_decodes_with_a_recorded_decision(body: bytes, header: str | None, is_html: bool) -> None:
    decoded = decode_body(body, header, is_html=is_html)
    assert isinstance(decoded.text, str)
    assert decoded.decision in {"declared", "utf-8", "detected", "default", "replaced"}
    assert codecs.lookup(decoded.charset)
