"""Task types of ``hive demo``: a small, real job that needs nothing but Python."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from .tasks import TaskContext, task


@task("demo.wordcount", timeout=60, max_retries=1)
def wordcount(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Count lines and words of one text file and name its most common words."""
    text = Path(payload["path"]).read_text(encoding="utf-8", errors="replace")
    words = [w.strip(".,:;()[]{}\"'`").lower() for w in text.split()]
    common = Counter(w for w in words if len(w) > 3).most_common(3)
    return {
        "path": payload["path"],
        "lines": text.count("\n"),
        "words": len(words),
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:12],
        "top": [w for w, _ in common],
        "node": context.node_name,
    }
