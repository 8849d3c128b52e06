"""Default reducers (``trylast``): collect, concat, sum, count and merge (the ``mapreduce`` plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import HiveConfig
from ..hookspecs import hookimpl


def _concat(results: list[Any]) -> list[Any]:
    out: list[Any] = []
    for r in results:
        out.extend(r if isinstance(r, list) else [r])
    return out


def _merge(results: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        if isinstance(r, dict):
            out.update(r)
    return out


REDUCERS: dict[str, Callable[[list[Any]], Any]] = {
    "collect": list,
    "concat": _concat,
    "sum": lambda results: sum(r for r in results if isinstance(r, int | float) and not isinstance(r, bool)),
    "count": len,
    "merge": _merge,
}


@hookimpl(trylast=True)
def reduce(reducer: str, results: list[Any], config: HiveConfig) -> Any:
    func = REDUCERS.get(reducer)
    return None if func is None else func(results)
