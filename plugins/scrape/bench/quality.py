"""Summary quality on pages with a known true article body: sentence precision, empty articles, language labels.

    python plugins/scrape/bench/quality.py                          # the shipped offline set (bench/fixtures)
    python plugins/scrape/bench/quality.py DIR                      # DIR/manifest.json, as make_fixtures.py writes
    python plugins/scrape/bench/quality.py --scrapinghub DIR        # article-extraction-benchmark's layout
    python plugins/scrape/bench/quality.py DIR --sentences 5 --json --show-misses

Pages are summarised in-process (no HTTP: the page's bytes and Content-Type go straight to the plugin's
extraction, charset decision, language detection and summariser), exactly as a spore does after fetching.

A manifest is a JSON list of ``{"page": "a.html", "body": "a.txt", "language": "en", "content_type":
"text/html; charset=iso-8859-1"}`` (paths relative to DIR; ``language`` and ``content_type`` optional).
``--scrapinghub DIR`` reads a checkout of the article-extraction-benchmark repository instead
(``DIR/ground-truth.json`` with ``{id: {"articleBody", "url"}}`` and ``DIR/html/ID.html.gz``; all English).

Figures, overall and per language:

* **sentence precision**: the share of summary sentences that occur in the true body (whitespace- and
  quote-insensitive). A sentence from navigation, an ad or a comment counts against it;
* **empty articles**: pages whose true body has at least 3 sentences but which came back ``no_text`` or with
  an empty summary;
* **language accuracy**: the share of pages with a language label whose detected language matches it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive_plugin_scrape.fetch import Page, ScrapeError, _content_type
from hive_plugin_scrape.scraper import summarise_page
from hive_plugin_scrape.summarise import is_candidate, split_sentences
from hive_plugin_scrape.urls import ScrapeRequest

HERE = Path(__file__).parent
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00a0": " "})


@dataclass
class Case:
    name: str
    html: bytes
    body: str
    language: str | None
    content_type: str = "text/html"
    url: str = "https://bench.example/page"


@dataclass
class Tally:
    pages: int = 0
    sentences: int = 0
    in_body: int = 0
    eligible: int = 0  # true body of >= 3 sentences
    empty: int = 0
    labelled: int = 0
    language_right: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    misses: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "summary_sentences": self.sentences,
            "sentence_precision": round(self.in_body / self.sentences, 4) if self.sentences else None,
            "empty_articles": self.empty,
            "empty_rate": round(self.empty / self.eligible, 4) if self.eligible else None,
            "language_accuracy": round(self.language_right / self.labelled, 4) if self.labelled else None,
            "errors": dict(self.errors),
        }


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).translate(_QUOTES).split())


def manifest_cases(folder: Path) -> list[Case]:
    entries = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return [
        Case(name=entry["page"], html=(folder / entry["page"]).read_bytes(),
             body=(folder / entry["body"]).read_text(encoding="utf-8"), language=entry.get("language"),
             content_type=entry.get("content_type", "text/html"), url=entry.get("url", Case.url))
        for entry in entries
    ]


def scrapinghub_cases(folder: Path) -> list[Case]:
    truth = json.loads((folder / "ground-truth.json").read_text(encoding="utf-8"))
    cases = []
    for key, entry in sorted(truth.items()):
        path = folder / "html" / f"{key}.html.gz"
        if path.exists():
            cases.append(Case(name=key, html=gzip.decompress(path.read_bytes()), body=entry.get("articleBody", ""),
                              language="en", url=entry.get("url") or Case.url))
    return cases


def evaluate(cases: list[Case], sentences: int) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    for case in cases:
        media_type, charset = _content_type(case.content_type)
        page = Page(url=case.url, final_url=case.url, status_code=200, media_type=media_type or "text/html",
                    charset=charset, body=case.html)
        body = normalise(case.body)
        eligible = sum(is_candidate(s) for s in split_sentences(case.body)) >= 3
        for key in ("all", case.language or "unlabelled"):
            tallies[key].pages += 1
            tallies[key].eligible += eligible
        try:
            result = summarise_page(page, ScrapeRequest(url=case.url, sentences=sentences))
        except ScrapeError as exc:
            for key in ("all", case.language or "unlabelled"):
                tallies[key].errors[exc.kind] += 1
                tallies[key].empty += eligible
                tallies[key].labelled += case.language is not None
            continue
        summary = result["summary"]
        found = [normalise(s) in body for s in summary]
        for key in ("all", case.language or "unlabelled"):
            tally = tallies[key]
            tally.sentences += len(summary)
            tally.in_body += sum(found)
            tally.empty += eligible and not summary
            if case.language is not None:
                tally.labelled += 1
                tally.language_right += result["language"] == case.language
        if not all(found) or (case.language and result["language"] != case.language):
            tallies["all"].misses.append({
                "page": case.name, "language": [case.language, result["language"]],
                "not_in_body": [s for s, ok in zip(summary, found, strict=True) if not ok],
            })
    return tallies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=HERE / "fixtures")
    parser.add_argument("--scrapinghub", action="store_true", help="FOLDER is an article-extraction-benchmark checkout")
    parser.add_argument("--sentences", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--show-misses", action="store_true")
    options = parser.parse_args(argv)
    cases = scrapinghub_cases(options.folder) if options.scrapinghub else manifest_cases(options.folder)
    started = time.monotonic()
    tallies = evaluate(cases, options.sentences)
    elapsed = time.monotonic() - started
    rows = {key: tally.row() for key, tally in sorted(tallies.items(), key=lambda kv: (kv[0] != "all", kv[0]))}
    if options.json:
        print(json.dumps({"rows": rows, "seconds": round(elapsed, 1), "misses": tallies["all"].misses}, indent=1,
                         ensure_ascii=False))
        return 0
    print(f"{len(cases)} pages from {options.folder} in {elapsed:.1f}s, {options.sentences} sentences each")
    print(f"{'set':<12} {'pages':>5} {'sentences':>9} {'precision':>9} {'empty':>5} {'language':>8}  errors")
    for key, row in rows.items():
        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"
        print(f"{key:<12} {row['pages']:>5} {row['summary_sentences']:>9} {pct(row['sentence_precision']):>9} "
              f"{row['empty_articles']:>5} {pct(row['language_accuracy']):>8}  {row['errors'] or ''}")
    if options.show_misses:
        for miss in tallies["all"].misses:
            print(json.dumps(miss, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
