"""``hive scrape URL...``: summarise pages on the cluster's spores and print a digest."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import click
from hive_framework import CliState, MessageBroker, run_coro

from .settings import ScrapeSettings
from .urls import MAX_SENTENCES, InvalidPayload, parse_url


@click.command("scrape")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("--sentences", "-s", type=click.IntRange(1, MAX_SENTENCES), default=3, show_default=True,
              help="Sentences per summary.")
@click.option("--language", default="auto", show_default=True,
              help="Stop words to rank with: auto, an ISO code (en, pl...) or a jusText list name.")
@click.option("--wait-timeout", type=click.FloatRange(min=0, min_open=True), default=300, show_default=True,
              help="Seconds to wait for the spores; unfinished URLs are reported as pending.")
@click.option("--priority", default="high_priority", show_default=True, help="high_priority, background or 0-10.")
@click.option("--json", "as_json", is_flag=True, help="Print the digest as JSON instead of a table.")
@click.option("--queue", is_flag=True,
              help="Submit even when no spore that runs web_scraping is online (one started later does the work).")
@click.pass_obj
@run_coro
async def scrape_command(
    state: CliState, urls: tuple[str, ...], sentences: int, language: str, wait_timeout: float, priority: str,
    as_json: bool, queue: bool,
) -> None:
    """Fetch, extract and summarise each URL on the spores (task type web_scraping) and print a digest.

    Exits 1 when any URL could not be summarised, or at once when no spore that can do it is online.
    """
    from hive_framework import ParallelSkill

    try:
        for url in urls:
            parse_url(url)
    except InvalidPayload as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    # The URLs as typed: the digest is keyed by them (the spores fetch and cache the canonical form).
    items = [{"url": url, "sentences": sentences, "language": language} for url in urls]
    kernel = state.kernel()
    ScrapeSettings.from_config(kernel.config)  # a bad [plugins.scrape] section fails here, not on every spore
    async with MessageBroker(kernel) as broker:
        if not queue:
            problem = no_scraper_online(await broker.get_nodes())
            if problem:
                raise click.ClickException(f"{problem}; nothing submitted (--queue submits anyway)")
        report = json.loads(await ParallelSkill(broker).map_reduce(
            f"Summarise each page in {sentences} sentences", items, priority=priority,
            wait_timeout=wait_timeout, task_type="web_scraping", reducer="scrape_digest",
        ))
    if "error" in report:
        raise click.ClickException(report["error"])
    pages = full_digest(report)
    if as_json:
        click.echo(json.dumps(pages, indent=2, ensure_ascii=False))
    else:
        click.echo(render_table(pages, report["summary"]))
    if any("error" in page for page in pages.values()):
        sys.exit(1)


def no_scraper_online(nodes: list[Any]) -> str | None:
    """Why no online spore would run a web_scraping task (``None`` when one would)."""
    if not nodes:
        return "no spore is online (start one with `hive spore`, or `hive up --spores N`)"
    capable = [n for n in nodes if "web_scraping" in n.task_types]
    if not capable:
        return (f"{len(nodes)} spore(s) online, but none runs web_scraping "
                "(is hive-plugin-scrape installed where they run?)")
    if all(n.paused for n in capable):
        return f"every spore that runs web_scraping is paused ({len(capable)}); resume one with `hive broadcast RESUME`"
    return None


def full_digest(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job's digest, plus items whose task failed or never finished (which the reducer does not see)."""
    pages: dict[str, dict[str, Any]] = dict(report.get("reduced") or {})
    for outcome in report["results"]:
        url = outcome["item"]["url"] if isinstance(outcome["item"], dict) else str(outcome["item"])
        if url in pages:
            continue
        if outcome["status"] in ("pending", "waiting", "scheduled", "running", "retrying"):
            pages[url] = {"error": "not finished before --wait-timeout (are spores running?)", "error_kind": "pending"}
        else:
            pages[url] = {"error": outcome.get("error") or outcome["status"], "error_kind": "task_failed"}
    return pages


def render_table(pages: dict[str, dict[str, Any]], summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for url, page in pages.items():
        if "error" in page:
            lines.append(f"✗ {url}\n    {page['error_kind']}: {page['error']}")
            continue
        lines.append(f"✓ {url}\n    {page.get('title') or '(no title)'}")
        for sentence in page["summary"]:
            lines.append(textwrap.fill(sentence, width=100, initial_indent="    - ", subsequent_indent="      "))
    failed = sum("error" in page for page in pages.values())
    lines.append(f"{len(pages)} URL(s): {len(pages) - failed} summarised, {failed} failed "
                 f"in {summary.get('duration_s', 0):.1f}s")
    return "\n".join(lines)
