"""``hive map TASK_TYPE FILE|-``: items from a file or stdin, a table or JSON, exit status 1 when an item failed.

The CLI runs as its own process; the spore runs in the test's process (the CLI is driven off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from hive_framework import Kernel

from .integration_helpers import BASIC, REPO_ROOT, cli_env

pytestmark = pytest.mark.redis


@pytest.fixture
def hive_kernel(hive_config):
    """The in-process spore knows the test task types; installed plugins (scrape...) stay out of it."""
    return Kernel(hive_config, apps=[BASIC], load_entry_points=False)


async def hive_map(config, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hive_framework map ARGS`` as a client process in ``config``'s namespace."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hive_framework", "--log-level", "warning", "map", *args],
        env=cli_env(config),
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def table_rows(stdout: str) -> list[list[str]]:
    """The table's rows (after its header) split into index, status, node and the result/error text."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["#", "status", "node", "result", "/", "error"], stdout
    return [line.split(None, 3) for line in lines[1:] if not line.startswith("reduced")]


async def test_map_reads_a_json_array_file_and_prints_a_table(hive_config, run_spore, tmp_path):
    # Given a spore and a file holding a JSON array of payloads
    await run_spore(name="cli-file", concurrency=4)
    source = tmp_path / "items.json"
    source.write_text(json.dumps([{"value": i, "seconds": 0.01 * (3 - i)} for i in range(4)]))

    # When `hive map mr_item FILE --reducer sum` runs
    done = await hive_map(hive_config, "mr_item", str(source), "--reducer", "sum", "--chunk-size", "2")

    # Then it exits 0 and prints one row per item, in input order, with the node and result, then the reduction
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(str(i), "completed", "cli-file", str(i)) for i in range(4)]
    assert done.stdout.splitlines()[-1] == "reduced (sum): 6"


async def test_map_reads_one_item_per_line_from_stdin_and_prints_json(hive_config, run_spore):
    # Given a spore, and lines on stdin: plain text and a JSON value
    await run_spore(name="cli-stdin", concurrency=4)
    lines = "hello\n\n  hive  \n[1, 2]\n"

    # When `hive map mr_length - --json` reads them
    done = await hive_map(hive_config, "mr_length", "-", "--json", stdin=lines)

    # Then it exits 0 and prints JSON: a summary and each item's outcome in input order (blank lines skipped)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["summary"]["total_tasks"] == data["summary"]["completed"] == 3
    assert [r["item"] for r in data["results"]] == ["hello", "hive", [1, 2]]
    assert [r["result"] for r in data["results"]] == [5, 4, 6]
    assert [r["status"] for r in data["results"]] == ["completed"] * 3
    assert data["reduced"] is None
    assert 0 < data["summary"]["duration_s"] < 30


async def test_map_exits_non_zero_when_an_item_failed_or_did_not_finish(hive, hive_config, run_spore, tmp_path):
    # Given a spore, and items of which one fails
    await run_spore(name="cli-fail", concurrency=4)
    source = tmp_path / "items.json"
    source.write_text(json.dumps([{"value": 0}, {"value": 1, "fail": True}, {"value": 2}]))

    # When `hive map` runs them, as a table and as JSON
    table = await hive_map(hive_config, "mr_item", str(source))
    as_json = await hive_map(hive_config, "mr_item", str(source), "--json")

    # Then both exit 1, and show the failed item's error in its place
    assert table.returncode == 1, table.stderr
    rows = table_rows(table.stdout)
    assert [r[1] for r in rows] == ["completed", "failed", "completed"]
    assert rows[1][3] == "ValueError: item 1 fails on purpose"
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["summary"]["failed"] == 1 and data["summary"]["completed"] == 2
    assert data["results"][1]["error"] == "ValueError: item 1 fails on purpose"

    # When an item cannot finish within --timeout
    late = await hive_map(hive_config, "mr_item", "-", "--json", "--timeout", "0.5",
                          stdin='{"value": 0}\n{"value": 1, "gate": "never", "max_wait": 3}\n')

    # Then it exits 1 too, reporting that item pending
    assert late.returncode == 1, late.stderr
    assert [r["status"] for r in json.loads(late.stdout)["results"]] == ["completed", "pending"]
    await hive.broker.redis.set(f"{hive_config.key_prefix}:test:gate:never", b"1")  # let it end before teardown


async def test_map_refuses_empty_input_and_unknown_task_types_with_one_line(hive_config):
    # Given no spore (nothing is enqueued)
    # When the input is empty, or the task type unknown
    empty = await hive_map(hive_config, "mr_item", "-", stdin="\n\n")
    unknown = await hive_map(hive_config, "no_such_type", "-", stdin="a\n")
    bad_json = await hive_map(hive_config, "mr_item", "-", stdin="[1, 2\n")

    # Then each exits non-zero with one clear line, no traceback
    assert empty.returncode == 1
    assert "no items to map (the input is empty)" in empty.stderr
    assert unknown.returncode == 1
    assert "unknown task type 'no_such_type'" in unknown.stderr
    assert bad_json.returncode == 2
    assert "not a valid JSON array" in bad_json.stderr
    for done in (empty, unknown, bad_json):
        assert "Traceback" not in done.stderr
