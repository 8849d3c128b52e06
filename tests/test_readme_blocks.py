"""The README is a test: every fenced code block of README.md and of each plugin's README runs as written.

A block is run according to its language and the HTML comment on the line before it:

* ``<!-- not run: REASON -->``: skipped, with the reason in the source for the reader (a Python block is still
  compiled, so a top-level ``await`` fails);
* ``<!-- file: PATH -->``: written to PATH in the user's folder (the quick start's ``myapp/tasks.py``);
* ``<!-- run: in the background ... -->``: a shell block started in its own terminal group, stopped with
  Ctrl-C (SIGINT to the group) after the document's other blocks; it must then exit 0 without a traceback;
* ``<!-- output of the block above ... -->``: the previous block's stdout must hold these lines in this order
  (``...`` stands for any lines);
* otherwise ``bash`` blocks run with ``bash -e``, ``python`` blocks as scripts, ``toml``/``yaml``/``json`` are
  parsed. Anything else must be marked.

Blocks run in a fresh folder, in a user's environment: ``hive`` on PATH, ``REDIS_URL`` naming a private
``redis-server`` started for the document, nothing else of the test run's settings.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import redis
import yaml

from hive_framework.embedded import EmbeddedRedis, free_port
from hive_framework.testing import wait_until

from .first_hour_helpers import user_env

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted(REPO.glob("plugins/*/README.md"))]
MARKER = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SHELLS = {"bash", "sh", "shell"}
DATA = {"toml", "yaml", "json"}


@attrs.frozen
class Block:
    document: Path
    line: int
    lang: str
    text: str
    marker: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced blocks of ``document``, de-indented, each with the HTML comment just before it."""
    found: list[Block] = []
    lines = document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, lang = opening.group(1), opening.group(2)
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        body: list[str] = []
        index += 1
        while index < len(lines) and not re.match(rf"^{indent}```\s*$", lines[index]):
            body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index].lstrip())
            index += 1
        found.append(Block(document, index - len(body), lang, "\n".join(body) + "\n",
                           marker.group(1) if marker else ""))
        index += 1
    return found


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks(document)]


def test_every_block_is_runnable_or_says_why_not() -> None:
    unmarked = [b.where for b in ALL_BLOCKS if b.lang not in SHELLS | DATA | {"python"} and not b.marker]
    assert unmarked == [], f"blocks with no way to run them: mark them <!-- not run: reason -->: {unmarked}"
    reasonless = [b.where for b in ALL_BLOCKS if b.marker.startswith("not run") and len(b.marker) < len("not run: x")]
    assert reasonless == []
    unknown = [b.where for b in ALL_BLOCKS
               if b.marker and not b.marker.startswith(("not run: ", "file: ", "run: in the background", "output"))]
    assert unknown == []


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=lambda b: b.where)
def test_every_python_block_compiles_as_a_script(block: Block) -> None:
    # A top-level `await` or `async with` is a SyntaxError in a script: the reader could not run it.
    ast.parse(block.text, filename=block.where)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in DATA and not b.marker], ids=lambda b: b.where)
def test_every_data_block_parses(block: Block) -> None:
    if block.lang == "toml":
        tomllib.loads(block.text)
    elif block.lang == "yaml":
        list(yaml.safe_load_all(block.text))
    else:
        json.loads(block.text)


# --- running a document's blocks, in order, against a private Redis -----------------------------------


@pytest.fixture
def private_redis() -> Iterator[str]:
    server = EmbeddedRedis(prefer="redis-server")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def nodes_online(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.hlen("venom:nodeinfo"))
    finally:
        client.close()


def expect_output(expected: str, stdout: str, where: str) -> None:
    """Each shown line appears in ``stdout``, in order; ``...`` lines stand for anything."""
    actual = [line.rstrip() for line in stdout.splitlines()]
    position = 0
    for wanted in (line.rstrip() for line in expected.splitlines()):
        if not wanted or wanted == "...":
            continue
        while position < len(actual) and actual[position] != wanted:
            position += 1
        assert position < len(actual), f"{where}: the output shown has {wanted!r}; the block printed:\n{stdout}"
        position += 1


def run_document(document: Path, folder: Path, redis_url: str) -> list[str]:
    """Run every runnable block of ``document`` in ``folder``; returns the places of the blocks it ran."""
    env = user_env(
        REDIS_URL=redis_url,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        HIVE_MONITOR_PORT=str(free_port()),  # the machine may have other monitors on 8765
        HIVE_STATE_DIR=str(folder / ".state"),
        PYTHONUNBUFFERED="1",
    )
    background: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
    ran: list[str] = []
    last_stdout = ""
    try:
        for number, block in enumerate(blocks(document)):
            if block.marker.startswith("not run"):
                continue
            if block.marker.startswith("file: "):
                target = folder / block.marker.removeprefix("file: ").strip()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.text)
            elif block.marker.startswith("output"):
                expect_output(block.text, last_stdout, block.where)
            elif block.lang in DATA:
                continue  # parsed by test_every_data_block_parses
            elif block.marker.startswith("run: in the background"):
                assert block.lang in SHELLS, block.where
                log = folder / f"background-{number}.log"
                before = nodes_online(redis_url)
                with open(log, "wb") as sink:
                    proc = subprocess.Popen(["bash", "-e", "-c", block.text], cwd=folder, env=env,
                                            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
                background.append((block, proc, log))
                wait_until(lambda proc=proc, log=log, before=before: nodes_online(redis_url) > before
                           or _ended(proc, log), timeout=120, what=f"{block.where}: its spores online")
            elif block.lang in SHELLS:
                done = subprocess.run(["bash", "-e", "-c", block.text], cwd=folder, env=env, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                last_stdout = done.stdout
            elif block.lang == "python":
                script = folder / f"readme_block_{number}.py"
                script.write_text(block.text)
                done = subprocess.run([sys.executable, script.name], cwd=folder, env=env, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                last_stdout = done.stdout
            ran.append(block.where)
    finally:
        stopped = []
        for _, proc, _ in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal it runs in
        for block, proc, log in background:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stopped.append((block, proc.returncode, log.read_text(errors="replace")))
    for block, code, output in stopped:
        assert code == 0, f"{block.where}: after Ctrl-C it exited {code}:\n{output}"
        assert "Traceback" not in output, f"{block.where}:\n{output}"
    return ran


def _ended(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is None:
        return False
    raise AssertionError(f"exited {proc.returncode} before its spores came online:\n{log.read_text(errors='replace')}")


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(REPO)))
def test_the_document_runs_as_written(document: Path, tmp_path: Path, private_redis: str) -> None:
    ran = run_document(document, tmp_path, private_redis)
    # Nothing runnable was silently passed over
    runnable = [b.where for b in blocks(document) if not b.marker.startswith("not run") and b.lang not in DATA]
    assert ran == runnable


def test_the_quick_start_is_run_not_skipped() -> None:
    # The blocks a new user follows first are run, not marked away.
    readme = blocks(REPO / "README.md")
    tasks = next(b for b in readme if b.lang == "python")
    assert tasks.marker == "file: myapp/tasks.py"
    assert tasks.text.startswith("from hive_framework import TaskContext, task")
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Python quick start")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    following = [b for b in readme if start < b.line <= end and ("myapp" in b.text or "Hive.connect" in b.text)]
    assert len(following) >= 3 and all(not b.marker.startswith("not run") for b in following)
