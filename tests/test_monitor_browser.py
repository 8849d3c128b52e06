"""Hive Monitor end to end in headless Chromium: a real `hive nexus` serving the page, real spore processes,
and Playwright reading the page as a person would (no reloads; the page follows the server-sent events).

Needs Debian's ``chromium`` (/usr/bin/chromium) and Playwright for Python; without them these tests are skipped
with the reason, unless ``HIVE_REQUIRE_BROWSER=1`` (CI), where that is a failure. Playwright's own browser
download is never used. Screenshots go to each test's ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hive_framework import HiveConfig, Kernel, TaskStatus
from hive_framework.testing import NexusProcess, async_wait_until, delete_namespace, fast_config

from .integration_helpers import BASIC, open_gate, wait_for_nodes
from .monitor_helpers import free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "browser-test-token"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: How long the page may take to show a change (it is pushed about once a second).
SHOWN_MS = 20_000


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium at /usr/bin/chromium (apt-get install chromium)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    reason = browser_missing()
    if reason is not None:
        if os.environ.get("HIVE_REQUIRE_BROWSER", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"HIVE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def hive_config(hive_redis_url: str) -> Iterator[HiveConfig]:
    """Fast settings with the monitor on (a free port, with a token) for the nexus these tests start."""
    config = fast_config(hive_redis_url, monitor=True, monitor_port=free_port(), monitor_token=TOKEN)
    yield config
    delete_namespace(hive_redis_url, config)


@pytest.fixture
def hive_kernel(hive_config: HiveConfig) -> Kernel:
    return Kernel(hive_config, apps=[BASIC])


@pytest.fixture
async def monitor_url(hive_config: HiveConfig, tmp_path: Path) -> AsyncIterator[str]:
    """A real `hive nexus` process serving the monitor; its URL once it answers."""
    nexus = NexusProcess(hive_config, log_dir=tmp_path)
    url = f"http://127.0.0.1:{hive_config.monitor_port}/"
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def answers() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get(url + "api/nodes")).status_code == 200
                assert nexus.proc.poll() is None, f"the nexus exited:\n{nexus.log()}"
                return False

            await async_wait_until(answers, timeout=30, interval=0.1, what="the nexus's monitor to answer")
        yield url
    finally:
        nexus.stop()


async def new_page(browser: Any, url: str) -> Any:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(url)
    return page


def task_status(page: Any, task_id: str) -> Any:
    return page.locator(f'#tasks tr[data-task-id="{task_id}"] td.status')


async def test_the_page_lists_the_spores_and_follows_a_task_from_pending_to_completed(
    browser, hive, spore_processes, monitor_url, tmp_path
):
    from playwright.async_api import expect

    # Given two spores with one slot each, and the monitor page open
    names = ("mon-a", "mon-b")
    for name in names:
        spore_processes(name, apps=(BASIC,), concurrency=1)
    await wait_for_nodes(hive, names)
    page = await new_page(browser, monitor_url)

    # Then the page lists both running spores, online
    for name in names:
        row = page.locator(f'#nodes tr[data-node-id="{name}"]')
        await expect(row).to_contain_text(name, timeout=SHOWN_MS)
        await expect(row.locator("td").nth(1)).to_have_text("online")
    await expect(page.locator("#live")).to_have_text("live")
    await page.evaluate("window.__sameDocument = 'no reload'")

    # When both slots are held by gated tasks and one more task is submitted
    blockers = [await hive.submit("gated", {"label": f"hold-{i}", "gate": "hold"}) for i in range(2)]

    async def both_running() -> bool:
        return all(m is not None and m.status == TaskStatus.RUNNING for m in await hive.broker.get_tasks(blockers))

    await async_wait_until(both_running, timeout=20, what="both blockers to run")
    watched = await hive.submit("gated", {"label": "watched", "gate": "go"})

    # Then the page shows it pending (and the blockers running), by itself
    await expect(task_status(page, watched)).to_have_text("pending", timeout=SHOWN_MS)
    for blocker in blockers:
        await expect(task_status(page, blocker)).to_have_text("running", timeout=SHOWN_MS)
    await page.screenshot(path=str(tmp_path / "monitor-pending.png"), full_page=True)

    # When a slot frees, it runs; when its own gate opens, it completes
    await open_gate(hive, "hold")
    await expect(task_status(page, watched)).to_have_text("running", timeout=SHOWN_MS)
    await open_gate(hive, "go")

    # Then the page shows it completed, on a node, still without a reload
    await expect(task_status(page, watched)).to_have_text("completed", timeout=SHOWN_MS)
    row = page.locator(f'#tasks tr[data-task-id="{watched}"]')
    await expect(row.locator("td").nth(3)).to_have_text(re.compile(r"^mon-(a|b)$"))
    await expect(page.locator("#sum-completed")).to_have_text("3", timeout=SHOWN_MS)
    assert await page.evaluate("window.__sameDocument") == "no reload"
    await page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
    assert (tmp_path / "monitor.png").stat().st_size > 10_000
    assert page.errors == []


async def test_actions_in_the_page_are_refused_without_the_token_and_work_with_it(
    browser, hive, spore_processes, monitor_url, tmp_path
):
    from playwright.async_api import expect

    # Given a spore, a task that failed for good on its first try (it would pass on a second), and the page
    spore_processes("act-a", apps=(BASIC,), concurrency=2)
    await wait_for_nodes(hive, ["act-a"])
    task_id = await hive.submit("flaky", {"failures": 1}, max_retries=0)
    assert (await hive.wait(task_id, timeout=20)).status == TaskStatus.FAILED
    page = await new_page(browser, monitor_url)
    dead_row = page.locator(f'#dead tr[data-task-id="{task_id}"]')
    await expect(dead_row).to_be_visible(timeout=SHOWN_MS)

    # When Retry is clicked with no token entered
    await dead_row.get_by_role("button", name="Retry").click()
    # Then the page says it was refused, and the task is still a dead letter
    await expect(page.locator("#flash")).to_contain_text("Refused", timeout=SHOWN_MS)
    assert (await hive.status(task_id)).status == TaskStatus.FAILED

    # When the token is entered and Retry clicked again
    await page.locator("#token").fill(TOKEN)
    await page.get_by_role("button", name="Use token").click()
    await dead_row.get_by_role("button", name="Retry").click()
    # Then the task runs again, completes, and leaves the dead letters on screen
    await expect(page.locator("#flash")).to_contain_text("queued again", timeout=SHOWN_MS)
    await expect(task_status(page, task_id)).to_have_text("completed", timeout=SHOWN_MS)
    await expect(dead_row).to_have_count(0, timeout=SHOWN_MS)

    # When the spore is paused from its row, then resumed
    node_row = page.locator('#nodes tr[data-node-id="act-a"]')
    await node_row.get_by_role("button", name="Pause").click()
    # Then its heartbeat, and so the page, says paused; then online again
    await expect(node_row.locator("td").nth(1)).to_have_text("paused", timeout=SHOWN_MS)
    await page.screenshot(path=str(tmp_path / "monitor-actions.png"), full_page=True)
    await node_row.get_by_role("button", name="Resume").click()
    await expect(node_row.locator("td").nth(1)).to_have_text("online", timeout=SHOWN_MS)
    assert page.errors == []
