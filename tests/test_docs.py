"""README.md stays true: its settings table, hooks, CLI commands and opening commands match the code.

Regenerate the settings table after changing :class:`HiveConfig` with ``python -m tests.test_docs``.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import attrs

from hive_framework import hookspecs
from hive_framework.config import HiveConfig

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def _default(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if isinstance(default, attrs.Factory):
        default = default.factory()
    if default is None:
        return "*(unset: all installed)*" if field.name == "load_plugins" else "*(unset)*"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if default in ("", (), {}):
        return "*(empty)*"
    if isinstance(default, tuple):  # written as in the environment: comma separated
        return f"`{','.join(map(str, default))}`"
    return f"`{default}`"


def settings_table() -> str:
    """The Markdown table of every :class:`HiveConfig` setting, from its attrs field metadata."""
    rows = ["| environment | TOML key | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(HiveConfig):
        env = field.metadata.get("env") or "—"
        env_cell = f"`{env}`" if env != "—" else env
        key = f"`{field.name}`" if field.name != "plugins" else "`[plugins.NAME]`"
        doc = field.metadata["doc"].replace("|", "\\|")
        rows.append(f"| {env_cell} | {key} | {_default(field)} | {doc} |")
    return "\n".join(rows)


def readme_table(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def first_code_block(text: str) -> list[str]:
    match = re.search(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    assert match, "README.md has no code block"
    return [line for line in match.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_settings_table_is_generated_from_hiveconfig():
    # Given the README and the settings the code defines
    text = README.read_text(encoding="utf-8")
    # Then the table between the markers is exactly the one generated from HiveConfig's field metadata
    assert readme_table(text) == settings_table(), "settings table is stale: run `python -m tests.test_docs`"


def test_every_environment_name_is_documented():
    text = README.read_text(encoding="utf-8")
    for field in attrs.fields(HiveConfig):
        env = field.metadata.get("env")
        if env:
            assert f"`{env}`" in text, f"{env} ({field.name}) is not in README.md"


def test_every_hook_is_documented():
    text = README.read_text(encoding="utf-8")
    hooks = [
        name
        for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(obj, f"{hookspecs.PROJECT}_spec")
    ]
    assert hooks, "found no hookspecs"
    for name in hooks:
        assert f"`{name}`" in text, f"hook {name} is not documented in README.md"


def test_every_cli_command_is_documented():
    from hive_framework.cli import cli
    from hive_framework.demo import demo

    text = README.read_text(encoding="utf-8")
    for name in {*cli.commands, demo.name}:
        assert f"hive {name}" in text, f"`hive {name}` is not documented in README.md"


def test_readme_opens_with_exactly_two_commands():
    # .ci/run runs these two lines; it refuses any other count
    commands = first_code_block(README.read_text(encoding="utf-8"))
    assert len(commands) == 2, commands
    assert "hive scan" in commands[0]
    assert "nox" in commands[1]


def _write_table() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(START) + len(START), text.index(END)
    README.write_text(text[:start] + "\n" + settings_table() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    _write_table()
    sys.stdout.write(f"rewrote the settings table in {README}\n")
