"""The quality benchmark (bench/quality.py) on its shipped page set: the issue's goals hold, the set is current."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).parent.parent / "bench"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"scrape_bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_shipped_fixtures_are_what_the_generator_makes(tmp_path: Path) -> None:
    load("make_fixtures").generate(tmp_path)
    shipped = sorted(p.name for p in (BENCH / "fixtures").iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped:
        assert (BENCH / "fixtures" / name).read_bytes() == (tmp_path / name).read_bytes(), name


@pytest.mark.parametrize("sentences", [3, 50])
def test_the_goals_hold_on_the_shipped_pages(sentences: int) -> None:
    quality = load("quality")
    tallies = quality.evaluate(quality.manifest_cases(BENCH / "fixtures"), sentences)
    for language in ("all", "en", "de", "fr", "pl"):
        row = tallies[language].row()
        assert row["sentence_precision"] >= 0.99, (language, row, tallies["all"].misses)
        assert row["empty_articles"] == 0 and not row["errors"], (language, row)
        assert row["language_accuracy"] == 1.0, (language, row, tallies["all"].misses)
