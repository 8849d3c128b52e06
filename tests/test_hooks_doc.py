"""docs/hooks.md stays true: one section per hook of ``hookspecs.py``, with its exact signature, every
parameter, the right first-result flag, examples that register and work, and the plugins that really
implement it.

A hook section is a heading whose whole text is the hook's name in backticks (``### `execute` ``). In it:
a ``python`` block whose only line is the signature, one ``- `param` — ...`` bullet per parameter, a
``**First result:** yes|no`` line, a ``**Runs:**`` line, at least one more ``python`` block (the example),
and ``**Built-in plugins:**`` / ``**Bundled plugins:**`` paragraphs naming plugins in backticks (text in
parentheses is commentary, ``none`` when there is none).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import inspect
import logging
import re
import tomllib
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest

from hive_framework import BroadcastMessage, Kernel, MessageBroker, NodeInfo, TaskContext, TaskMessage, hookspecs
from hive_framework.plugins import DEFAULT_PLUGINS
from hive_framework.testing import fast_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "hooks.md"
README = ROOT / "README.md"
BUNDLED_DIR = ROOT / "plugins"
NOWHERE = "redis://127.0.0.1:1/0"  # the kernels here never connect
BUILTIN_NAMES = frozenset(name for name, _ in DEFAULT_PLUGINS)

HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
HOOK_HEADING = re.compile(r"^`([A-Za-z_]\w*)`$")
FENCE = re.compile(r"^```(\w*)\s*$")


# --------------------------------------------------------------------------------------------------
# What the code says
# --------------------------------------------------------------------------------------------------


def spec_functions() -> dict[str, Callable[..., Any]]:
    """Every function of ``hookspecs.py`` marked with ``@hookspec``, by name."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: obj
        for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(obj, marker)
    }


HOOKS = sorted(spec_functions())


def kernel_for(**overrides: Any) -> Kernel:
    return Kernel(fast_config(NOWHERE, **overrides), load_entry_points=False)


@cache
def builtin_implementers() -> dict[str, frozenset[str]]:
    """Hook name -> names of the built-in plugins implementing it, as the plugin manager sees them."""
    kernel = kernel_for()
    return {
        hook: frozenset(
            impl.plugin_name
            for impl in getattr(kernel.pm.hook, hook).get_hookimpls()
            if impl.plugin_name in BUILTIN_NAMES
        )
        for hook in HOOKS
    }


@cache
def first_result_flags() -> dict[str, bool]:
    pm = kernel_for().pm
    return {hook: bool(getattr(pm.hook, hook).spec.opts.get("firstresult")) for hook in HOOKS}


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


def _hooks_in_source(source: str) -> set[str]:
    """Names of the hooks implemented in one file: functions under ``@hookimpl`` (``specname=`` honoured)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not _is_hookimpl(decorator):
                continue
            name = node.name
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    if keyword.arg == "specname" and isinstance(keyword.value, ast.Constant):
                        name = str(keyword.value.value)
            found.add(name)
    return found


@cache
def bundled_implementers() -> dict[str, frozenset[str]]:
    """Bundled plugin name (its entry point) -> hooks its package implements, read from the source."""
    plugins: dict[str, frozenset[str]] = {}
    for pyproject in sorted(BUNDLED_DIR.glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        entry_points = project.get("entry-points", {}).get(hookspecs.PROJECT + ".plugins", {})
        for name, target in entry_points.items():
            package = pyproject.parent / target.partition(":")[0].replace(".", "/")
            files = sorted(package.rglob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
            assert files and all(f.is_file() for f in files), f"plugin {name!r}: no source at {package}"
            hooks: set[str] = set()
            for path in files:
                hooks |= _hooks_in_source(path.read_text(encoding="utf-8"))
            plugins[name] = frozenset(hooks)
    assert plugins, f"found no bundled plugins under {BUNDLED_DIR}"
    return plugins


# --------------------------------------------------------------------------------------------------
# What the page says
# --------------------------------------------------------------------------------------------------


def _headings_and_blocks(text: str) -> list[tuple[str, str | None, int]]:
    """``(heading text, None, line)`` for headings outside code, ``(code, language, line)`` for fenced blocks."""
    out: list[tuple[str, str | None, int]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"docs/hooks.md: code block at line {i + 1} is not closed"
            out.append(("\n".join(lines[i + 1 : end]), fence.group(1) or "text", i + 1))
            i = end + 1
            continue
        heading = HEADING.match(lines[i])
        if heading:
            out.append((heading.group(2), None, i + 1))
        i += 1
    return out


@cache
def doc_sections() -> dict[str, dict[str, Any]]:
    """Hook name -> ``{"text": section text, "blocks": [(code, language)], "line": heading line}``."""
    text = DOC.read_text(encoding="utf-8")
    items = _headings_and_blocks(text)
    lines = text.splitlines()
    sections: dict[str, dict[str, Any]] = {}
    for index, (content, language, line) in enumerate(items):
        if language is not None:
            continue
        match = HOOK_HEADING.match(content)
        if not match:
            continue
        name = match.group(1)
        if name in sections:
            raise AssertionError(f"docs/hooks.md has two sections for {name!r}: lines {sections[name]['line']}, {line}")
        end_line = next((ln for c, lang, ln in items[index + 1 :] if lang is None), len(lines) + 1)
        blocks = [(c, lang) for c, lang, ln in items[index + 1 :] if lang is not None and ln < end_line]
        sections[name] = {"text": "\n".join(lines[line : end_line - 1]), "blocks": blocks, "line": line}
    return sections


def section(hook: str) -> dict[str, Any]:
    found = doc_sections().get(hook)
    assert found is not None, (
        f"hook {hook!r} (hive_framework/hookspecs.py) has no section in docs/hooks.md: "
        f"add a heading '### `{hook}`' with its signature, parameters, first-result flag, where it runs, "
        "an example and its implementers"
    )
    return found


def signature_block(hook: str) -> str:
    for code, language in section(hook)["blocks"]:
        if language == "python" and code.strip().startswith(f"def {hook}("):
            return code.strip()
    raise AssertionError(f"docs/hooks.md, section {hook!r}: no ```python block holding `def {hook}(...) -> ...`")


def example_blocks(hook: str) -> list[str]:
    signature = signature_block(hook)
    return [code for code, language in section(hook)["blocks"] if language == "python" and code.strip() != signature]


def paragraph(hook: str, label: str) -> str:
    """The text after ``**label:**`` up to the next bold label or blank line."""
    text = section(hook)["text"]
    matches = list(re.finditer(rf"^\*\*{re.escape(label)}:\*\*(.*?)(?=\n\*\*|\n\s*\n|\Z)", text, flags=re.S | re.M))
    assert len(matches) == 1, f"docs/hooks.md, section {hook!r}: expected one '**{label}:**' line, found {len(matches)}"
    return " ".join(matches[0].group(1).split())


def backticked_outside_parentheses(text: str) -> set[str]:
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\([^()]*\)", "", text)
    return set(re.findall(r"`([^`]+)`", text))


def named_plugins(hook: str, label: str) -> set[str]:
    """Plugin names in backticks in a ``**label:**`` paragraph, leaving out parenthesised commentary."""
    text = paragraph(hook, label)
    names = backticked_outside_parentheses(text)
    if not names:
        assert re.sub(r"\([^()]*\)", "", text).strip(" .").lower() == "none", (
            f"docs/hooks.md, section {hook!r}: '**{label}:**' names no plugin in backticks and does not say none"
        )
    return names


def _signature_node(source: str, hook: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == hook:
            return node
    raise AssertionError(f"no def {hook} in the given source")


def _signature_text(node: ast.FunctionDef) -> str:
    bare = copy.copy(node)
    bare.body, bare.decorator_list = [ast.Expr(ast.Constant(...))], []
    return ast.unparse(bare).splitlines()[0].removesuffix(":")


# --------------------------------------------------------------------------------------------------
# The checks, one per hook so a new hook fails with its own name
# --------------------------------------------------------------------------------------------------


def test_hookspecs_are_found():
    # Guards the parametrised tests below against passing vacuously
    assert len(HOOKS) >= 9, HOOKS
    assert {"execute", "route_task", "on_broadcast"} <= set(HOOKS)


def test_every_documented_hook_exists():
    # Given the hook sections of the page
    documented = set(doc_sections())
    # Then each one names a hook of hookspecs.py
    unknown = sorted(documented - set(HOOKS))
    assert not unknown, f"docs/hooks.md documents hooks that hookspecs.py does not define: {unknown}"


@pytest.mark.parametrize("hook", HOOKS)
def test_signature_is_the_hookspec(hook: str):
    # Given the hook's definition in hookspecs.py and the signature block of its section
    spec_source = inspect.getsource(hookspecs)
    expected = _signature_text(_signature_node(spec_source, hook))
    documented_source = signature_block(hook)
    try:
        documented_node = _signature_node(documented_source.rstrip(":") + ": ...", hook)
    except SyntaxError as exc:
        raise AssertionError(f"docs/hooks.md, section {hook!r}: the signature does not parse: {exc}") from exc
    # Then the parameter names, their order, the annotations and the return type are the same
    spec_params = list(inspect.signature(spec_functions()[hook]).parameters)
    doc_params = [a.arg for a in documented_node.args.args]
    assert doc_params == spec_params, (
        f"docs/hooks.md, section {hook!r}: parameters {doc_params}, hookspecs.py has {spec_params}"
    )
    assert _signature_text(documented_node) == expected, (
        f"docs/hooks.md, section {hook!r}: signature differs from hookspecs.py\n"
        f"  doc:  {documented_source}\n  spec: {expected}"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_parameter_is_explained(hook: str):
    text = section(hook)["text"]
    for param in inspect.signature(spec_functions()[hook]).parameters:
        assert re.search(rf"^- `{param}` — \S", text, flags=re.M), (
            f"docs/hooks.md, section {hook!r}: parameter {param!r} has no '- `{param}` — ...' line"
        )


@pytest.mark.parametrize("hook", HOOKS)
def test_first_result_flag_matches_the_hookspec(hook: str):
    stated = paragraph(hook, "First result").split()[0].strip(".:,").lower()
    assert stated in ("yes", "no"), f"docs/hooks.md, section {hook!r}: '**First result:**' must start with yes or no"
    actual = first_result_flags()[hook]
    assert (stated == "yes") == actual, (
        f"docs/hooks.md, section {hook!r} says first result {stated!r}, hookspecs.py has firstresult={actual}"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_where_it_runs_is_stated(hook: str):
    assert paragraph(hook, "Runs"), f"docs/hooks.md, section {hook!r}: '**Runs:**' says nothing"


@pytest.mark.parametrize("hook", HOOKS)
def test_builtin_implementers_are_the_real_ones(hook: str):
    # Given the built-in plugins the page names and those the plugin manager holds for the hook
    documented = named_plugins(hook, "Built-in plugins")
    actual = builtin_implementers()[hook]
    # Then they are the same set: none invented, none left out
    assert documented == actual, (
        f"docs/hooks.md, section {hook!r}: built-in implementers {sorted(documented)}, "
        f"but the kernel's {sorted(actual)} implement it (names from DEFAULT_PLUGINS)"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_bundled_implementers_are_the_real_ones(hook: str):
    documented = named_plugins(hook, "Bundled plugins")
    unknown = documented - set(bundled_implementers())
    assert not unknown, f"docs/hooks.md, section {hook!r}: {sorted(unknown)} are not bundled plugins under plugins/"
    actual = {name for name, hooks in bundled_implementers().items() if hook in hooks}
    assert documented == actual, (
        f"docs/hooks.md, section {hook!r}: bundled implementers {sorted(documented)}, "
        f"but the sources under plugins/ show {sorted(actual)}"
    )


# --- the examples work ------------------------------------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _probe_register_task_types(kernel: Kernel, name: str) -> None:
    row = next(r for r in kernel.describe_plugins(include_defaults=True) if r["name"] == name)
    assert row["task_types"], "the example registered no task type"
    task_type = kernel.task_types[row["task_types"][0]]
    assert task_type.handler({"value": 2})["value"] in (4, 6)


def _probe_register_commands(kernel: Kernel, name: str) -> None:
    from click.testing import CliRunner

    group = click.Group("hive")
    kernel.pm.hook.register_commands(cli=group)
    assert "hello" in group.commands
    result = CliRunner().invoke(group, ["hello", "bee"])
    assert result.exit_code == 0 and result.output == "hello bee\n", result.output


def _probe_create_engine(kernel: Kernel, name: str) -> None:
    engine = kernel.create_engine()
    assert type(engine).__module__ == name, type(engine)
    broker = MessageBroker(kernel, engine=engine)
    assert broker.engine is engine and engine.broker is broker


def _node(node_id: str, memory: float) -> NodeInfo:
    return NodeInfo(node_id=node_id, node_name=node_id, host="h", pid=1, memory_usage=memory,
                    capabilities={"tags": ["gpu"]})


def _probe_route_task(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="anything", requirements={"tags": ["gpu"]})
    assert kernel.route(task, [_node("busy", 90.0), _node("free", 10.0)]) == "free"


def _probe_execute(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="shout", payload={"text": "buzz"})
    context = TaskContext(task=task, node_id="n1", node_name="n1", kernel=kernel, redis=None,  # type: ignore[arg-type]
                          logger=logging.getLogger("doc"))
    assert _run(kernel.execute(task, context)) == {"text": "BUZZ"}


def _probe_claim_items(kernel: Kernel, name: str) -> None:
    assert kernel.claim("", ["a.png", "b.png"]) == "resize"


def _probe_reduce(kernel: Kernel, name: str) -> None:
    assert kernel.reduce("max", [1, 5, 2]) == 5
    assert kernel.reduce("sum", [1, 5, 2]) == 8  # other names still reach the built-ins


def _probe_on_broadcast(kernel: Kernel, name: str) -> None:
    spore = types.SimpleNamespace(node_name="n1", kernel=kernel)
    details = _run(kernel.broadcast(BroadcastMessage(command="who"), spore))
    assert len(details) == 1 and details[0].startswith("n1: ") and name in details[0], details


def _probe_apply_update(kernel: Kernel, name: str) -> None:
    spore = types.SimpleNamespace(log=logging.getLogger("doc"))
    assert _run(kernel.apply_update({"wheel": "app-2.whl"}, spore)) == {"installed": "app-2.whl"}


def _plugin(kernel: Kernel, name: str) -> Any:
    return kernel.pm.get_plugin(name)


def _probe_before_enqueue(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="anything")
    _run(kernel.run_lifecycle("before_enqueue", task=task, config=kernel.config))
    assert task.headers == {"tenant": "acme"}


def _probe_before_task(kernel: Kernel, name: str) -> None:
    _run(kernel.run_lifecycle("before_task", task=TaskMessage(task_id="t1", task_type="x"), node_id="n1"))
    assert set(_plugin(kernel, name).STARTED) == {"t1"}


def _probe_after_task(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="resize")
    _run(kernel.run_lifecycle("after_task", task=task, result=None, node_id="n1"))
    assert _plugin(kernel, name).COMPLETED == {"resize": 1}


def _probe_on_retry(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="x", attempt=1)
    _run(kernel.run_lifecycle("on_retry", task=task, error="E: x", exception=None, delay=0.5, node_id="n1"))
    assert _plugin(kernel, name).RETRIES == [("t1", 1, 0.5)]


def _probe_on_task_failure(kernel: Kernel, name: str) -> None:
    task = TaskMessage(task_id="t1", task_type="x")
    _run(kernel.run_lifecycle("on_task_failure", task=task, error="E: x", exception=None, node_id="n1"))
    assert _plugin(kernel, name).FAILURES == ["x t1: E: x"]


#: Hook -> a check that the page's example does what the page says. A hook without one is only
#: checked to register; add a probe when you add the hook.
PROBES: dict[str, Callable[[Kernel, str], None]] = {
    "register_task_types": _probe_register_task_types,
    "register_commands": _probe_register_commands,
    "create_engine": _probe_create_engine,
    "route_task": _probe_route_task,
    "execute": _probe_execute,
    "claim_items": _probe_claim_items,
    "reduce": _probe_reduce,
    "on_broadcast": _probe_on_broadcast,
    "apply_update": _probe_apply_update,
    "before_enqueue": _probe_before_enqueue,
    "before_task": _probe_before_task,
    "after_task": _probe_after_task,
    "on_retry": _probe_on_retry,
    "on_task_failure": _probe_on_task_failure,
}


@pytest.mark.parametrize("hook", HOOKS)
def test_example_registers_and_works(hook: str):
    # Given each example of the section, run as the source of a plugin module
    examples = example_blocks(hook)
    assert examples, f"docs/hooks.md, section {hook!r}: no example (a ```python block besides the signature)"
    for number, code in enumerate(examples, start=1):
        name = f"hooks_doc_{hook}_{number}"
        module = types.ModuleType(name)
        exec(compile(code, f"docs/hooks.md:{hook}#{number}", "exec"), module.__dict__)  # our own page's code
        # When a kernel registers it (as the broker or the balancer, for the hooks chosen by plugin name)
        chosen = {"broker": name} if hook == "create_engine" else {"balancer": name} if hook == "route_task" else {}
        kernel = Kernel(fast_config(NOWHERE, **chosen), plugins=[module], load_entry_points=False)
        # Then pluggy and the kernel's own checks accept it, it implements the hook, and it works
        implementers = {impl.plugin_name for impl in getattr(kernel.pm.hook, hook).get_hookimpls()}
        assert name in implementers, f"docs/hooks.md, section {hook!r}: example {number} does not implement {hook}"
        probe = PROBES.get(hook)
        if probe is not None:
            probe(kernel, name)


# --- plugin names elsewhere ------------------------------------------------------------------------


def test_readme_names_the_real_builtin_plugins():
    # Given the README's sentence listing the built-in plugins (names HIVE_DISABLE_PLUGINS accepts)
    text = " ".join(README.read_text(encoding="utf-8").split())
    match = re.search(r"The built-ins are plugins named (.*?); those names are reserved", text)
    assert match, "README.md no longer lists the built-in plugins ('The built-ins are plugins named ...')"
    # Then it names exactly the plugins registered from DEFAULT_PLUGINS
    named = backticked_outside_parentheses(match.group(1))
    assert named == BUILTIN_NAMES, f"README.md names {sorted(named)}; DEFAULT_PLUGINS: {sorted(BUILTIN_NAMES)}"


def test_the_reference_lists_every_builtin_and_bundled_plugin():
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    builtins = re.search(r"from `DEFAULT_PLUGINS` in .*?: (.*?)\. `tasks` is essential", text)
    assert builtins, "docs/hooks.md no longer lists the built-in plugins from DEFAULT_PLUGINS"
    named = backticked_outside_parentheses(builtins.group(1))
    assert named == BUILTIN_NAMES, f"hooks.md names built-ins {sorted(named)}; DEFAULT_PLUGINS: {sorted(BUILTIN_NAMES)}"
    bundled = re.search(r"The bundled plugins under .*? are found this way: (.*?)\.", text)
    assert bundled, "docs/hooks.md no longer lists the bundled plugins"
    assert backticked_outside_parentheses(bundled.group(1)) == set(bundled_implementers())


@pytest.mark.parametrize("path", [README, DOC], ids=lambda p: p.name)
def test_plugin_names_given_as_settings_exist(path: Path):
    # A name HIVE_DISABLE_PLUGINS does not know is silently ignored: every example must name a real plugin
    known = BUILTIN_NAMES | set(bundled_implementers())
    for match in re.finditer(r"HIVE_(DISABLE_PLUGINS|BROKER|BALANCER)=([\w,]+)", path.read_text(encoding="utf-8")):
        for name in filter(None, match.group(2).split(",")):
            assert name in known, f"{path.name}: {match.group(0)} names {name!r}, which is no plugin ({sorted(known)})"
