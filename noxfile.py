"""Nox sessions: ``nox`` runs tests (every Python found), plugins, lint and typecheck; ``nox -s bench`` benchmarks.

A Python version that is not installed is skipped, never an error, even with ``CI=true``. Tests that
need Redis read ``HIVE_TEST_REDIS_URL`` (else ``REDIS_URL``, else ``redis://127.0.0.1:6379/0``) and
are skipped without one unless ``HIVE_REQUIRE_REDIS=1``; ``.ci/run`` provides a Redis and sets both.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHONS = ["3.11", "3.12", "3.13"]

# Interpreters installed by pyenv count as found even when its shims do not expose them (pyenv's shim for
# an inactive version answers "command not found"): their bin folders go first on PATH.
_PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
_found = [str(d / "bin") for v in PYTHONS for d in sorted(_PYENV.glob(f"{v}.*"))[-1:] if (d / "bin").is_dir()]
os.environ["PATH"] = os.pathsep.join([*_found, os.environ.get("PATH", "")])
#: The third-party plugin distribution the tests install to check entry-point loading end to end.
EXAMPLE_PLUGIN = ROOT / "tests" / "plugin_dist" / "hive-plugin-example"
#: First-party plugins: separate distributions with their own tests.
PLUGIN_DIRS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))

nox.options.sessions = ["tests", "plugins", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False


#: pytest-xdist processes per run (``HIVE_TEST_WORKERS``, default 5; ``0`` runs in one process). The tests
#: mostly wait on spore processes and Redis: with three workers a run kept two cores 60 % busy, and five cut
#: its time by a sixth to a third. (Two runs side by side, three workers each, took as long as one after the
#: other and timed out the README's Ctrl-C test.) A file's tests stay in one process (``loadfile``): they
#: share module fixtures.
_workers = os.environ.get("HIVE_TEST_WORKERS", "5")
WORKERS = [] if _workers == "0" else ["-n", _workers, "--dist", "loadfile"]

#: Every broker runs the whole suite; the spores, clients and fixtures pick it up from HIVE_TEST_BROKER.
BROKERS = ["streams", "arq"]


@nox.session(python=PYTHONS)
@nox.parametrize("broker", BROKERS)
def tests(session: nox.Session, broker: str) -> None:
    """Install the project (``test`` extra) and the example plugin, then run pytest on one broker (``-- ARGS``).

    The default broker runs on every Python; the other on the oldest supported one, to keep CI short.
    """
    if broker != BROKERS[0] and session.python != PYTHONS[0]:
        session.skip(f"the {broker} broker runs on Python {PYTHONS[0]} only")
    session.env["HIVE_TEST_BROKER"] = broker
    # playwright drives the system Chromium in tests/test_monitor_browser.py (never `playwright install`).
    session.install(".[test]", "pytest-timeout", "pytest-xdist", "playwright")
    if EXAMPLE_PLUGIN.is_dir():
        session.install(str(EXAMPLE_PLUGIN))
    # README's first command installs it beside hive, so the new-user suites (tests/test_readme_blocks.py,
    # tests/test_mistakes.py: `hive scan`) run with it too.
    session.install(str(ROOT / "plugins" / "security_scan"))
    # A hung test fails with its traceback after 5 minutes instead of stalling the whole run.
    session.run("pytest", "--timeout=300", *WORKERS, *session.posargs)


@nox.session
def plugins(session: nox.Session) -> None:
    """Install every plugin under plugins/ (each its own distribution), type-check it and run its own tests."""
    if not PLUGIN_DIRS:
        session.skip("no plugins/*/pyproject.toml")
    session.install(".[test,lint]", "pytest-timeout", "pytest-xdist", *(f"{p}[test]" for p in PLUGIN_DIRS))
    for plugin in PLUGIN_DIRS:
        with session.chdir(plugin):
            session.run("mypy", "--config-file", "pyproject.toml", *(p.name for p in plugin.glob("hive_plugin_*")))
        if (plugin / "tests").is_dir():
            session.run("pytest", "--timeout=300", *WORKERS, str(plugin / "tests"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """``ruff check`` on every Python file (formatting is not enforced) and the import contracts of hive_framework."""
    session.install("ruff>=0.6", "import-linter>=2.1", "-e", ".")
    session.run("ruff", "check", *(session.posargs or ["."]))
    # The layer and independence contracts in pyproject.toml: imports in hive_framework only point down.
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` (configured in pyproject.toml) on hive_framework, with its dependencies installed."""
    session.install(".[test,lint]")
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run ``bench/run.py`` (not a default session: ``nox -s bench -- ARGS``)."""
    script = ROOT / "bench" / "run.py"
    if not script.is_file():
        session.skip("bench/run.py does not exist yet")
    session.install(".[test]")
    requirements = ROOT / "bench" / "requirements.txt"
    if requirements.is_file():
        session.install("-r", str(requirements))
    session.run("python", str(script), *session.posargs)
