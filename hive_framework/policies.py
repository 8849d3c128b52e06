"""Pure rules the core and the default plugins share: priority parsing, node requirements, load score, backoff.

Nothing here does I/O or imports a plugin or an engine, so any layer may use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import InvalidTask
from .models import PRIORITY_NAMES, NodeInfo

if TYPE_CHECKING:
    from .config import HiveConfig


def parse_priority(priority: int | str) -> int:
    """A priority name (``high_priority``, ``background``...) or a level 0-10 as an int; else InvalidTask."""
    if isinstance(priority, bool):
        raise InvalidTask(f"bad priority {priority!r}: use one of {sorted(PRIORITY_NAMES)} or 0-10")
    if isinstance(priority, int):
        level = priority
    elif isinstance(priority, str) and priority.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[priority.strip().lower()]
    elif isinstance(priority, str) and _is_level(priority):
        level = int(priority.strip())  # str.strip() removes more than int() skips (U+001F, say)
    else:
        raise InvalidTask(f"bad priority {priority!r}: use one of {sorted(PRIORITY_NAMES)} or 0-10")
    if not 0 <= level <= 10:
        raise InvalidTask(f"bad priority {priority!r}: levels run from 0 (lowest) to 10 (highest)")
    return level


def _is_level(text: str) -> bool:
    """An optional '-' then a few ASCII digits (``str.isdigit`` alone lets '²' and '--5' reach ``int``)."""
    digits = text.strip().removeprefix("-")
    return digits.isascii() and digits.isdigit() and len(digits) <= 20


def parse_requirements(requires: Iterable[str] = (), tags: Iterable[str] = ()) -> dict[str, Any]:
    """Node requirements from the command line: ``--require gpu`` is ``{"gpu": true}``, ``--require KEY=VALUE``
    takes VALUE as JSON when it parses (``min_free_memory_mb=2048``, ``zone="eu"``) else as text, and each
    ``--tag NAME`` adds NAME to ``tags``. A bad name is :class:`InvalidTask` naming it."""
    out: dict[str, Any] = {}
    for item in requires:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not _REQUIREMENT_KEY.fullmatch(key):
            raise InvalidTask(f"bad requirement {item!r}: use NAME or NAME=VALUE (NAME: letters, digits, '_', '-')")
        if key == "tags":
            raise InvalidTask("give tags with --tag NAME, not --require tags=...")
        if not sep:
            out[key] = True
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    wanted = [t.strip() for t in tags]
    if any(not t or not t.isprintable() for t in wanted):
        raise InvalidTask(f"bad tag in {list(tags)!r}: a tag is a non-empty printable name")
    if wanted:
        out["tags"] = sorted(set(wanted))
    return out


_REQUIREMENT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def node_meets(node: NodeInfo, requirements: dict[str, Any]) -> bool:
    """True when ``node`` offers every capability in ``requirements``.

    ``tags``/``skills``: all listed must be declared; ``min_free_memory_mb``: enough memory free now;
    any other key must equal the node's capability of that name (``{"gpu": True}``).
    """
    caps = node.capabilities
    for key, wanted in requirements.items():
        if key in ("tags", "skills"):
            wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
            if not wanted_set <= set(caps.get(key, [])):
                return False
        elif key == "min_free_memory_mb":
            if float(caps.get("free_memory_mb", 0)) < float(wanted):
                return False
        elif caps.get(key, False if isinstance(wanted, bool) else None) != wanted:
            return False
    return True


def load_score(node: NodeInfo, weights: tuple[float, float, float] = (0.4, 0.3, 0.3)) -> float:
    """The seed's formula, on percentages: ``cpu*0.4 + mem*0.3 + min(active/10, 1)*100*0.3``."""
    cpu_w, mem_w, task_w = weights
    return node.cpu_usage * cpu_w + node.memory_usage * mem_w + min(node.active_tasks / 10, 1.0) * 100 * task_w


def retry_delay(config: HiveConfig, attempt: int) -> float:
    """Exponential backoff: ``HIVE_RETRY_BACKOFF * 2**(attempt-1)``, capped at ``HIVE_RETRY_BACKOFF_MAX``."""
    return float(min(config.retry_backoff * 2 ** (attempt - 1), config.retry_backoff_max))
