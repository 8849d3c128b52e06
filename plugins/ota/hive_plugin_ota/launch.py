"""Start a spore on one release: ``python -m hive_plugin_ota.launch --root DIR [--release NAME] -- HIVE ARGS``.

The supervisor runs every spore through this: it puts the release's ``app/`` and ``site-packages/`` first on
``sys.path`` (ahead of the working directory, which ``python -m`` would otherwise search first), records which
release runs in :mod:`hive_plugin_ota.runtime`, then hands over to hive's own command line (``hive spore ...``).
The release is resolved once, at start: switching ``current`` later never changes a running process's code.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    root: str | None = None
    release_name: str | None = None
    while args and args[0] != "--":
        option = args.pop(0)
        if option in ("--root", "--release") and args:
            value = args.pop(0)
            if option == "--root":
                root = value
            else:
                release_name = value
        else:
            sys.exit(f"hive_plugin_ota.launch: unexpected argument {option!r}")
    if not args or root is None:
        sys.exit("usage: python -m hive_plugin_ota.launch --root DIR [--release NAME] -- HIVE-ARGS...")
    hive_args = args[1:]

    from . import runtime
    from .releases import ReleaseStore

    runtime.SUPERVISED = True
    runtime.ROOT = root
    if release_name:
        release = ReleaseStore(Path(root)).release(release_name)
        if release is None:
            sys.exit(f"hive_plugin_ota.launch: release {release_name!r} is not installed in {root}")
        sys.path[0:0] = [str(release.app_dir), str(release.site_dir)]
        runtime.RELEASE = release.name
        runtime.VERSION = release.version

    # ``python -m hive_framework HIVE-ARGS`` in this process, after the release's paths are in place.
    sys.argv = [sys.argv[0], *hive_args]
    runpy.run_module("hive_framework", run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
