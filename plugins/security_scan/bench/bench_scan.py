"""Benchmark: embedded ``hive scan`` against bandit then detect-secrets run directly, on a large Python tree.

    python plugins/security_scan/bench/bench_scan.py                 # downloads the sqlalchemy sdist
    python plugins/security_scan/bench/bench_scan.py --tree DIR      # any unpacked tree

Without ``--tree`` the source distribution of SQLAlchemy is fetched with ``pip download --no-binary :all:
--no-deps sqlalchemy`` into a temporary folder and unpacked. Then, one after the other, each once:

1. ``bandit -r TREE`` then ``detect-secrets scan --all-files`` in TREE (the tools alone);
2. ``hive scan TREE`` with no Redis configured (a private Redis and local spores), findings cache empty;
3. the same ``hive scan`` again, the tree unchanged (every file's findings come from the cache);
4. the same after changing one file (that file only is scanned).

Wall time is measured around each command and CPU time as the user + system time of the finished child
processes (``RUSAGE_CHILDREN``: the spores and Redis are waited for, so they count). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], *, cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float,
                                                                                                   str, str]:
    """(wall seconds, CPU seconds, stdout, stderr) of one command."""
    cpu0, wall0 = _children_cpu(), time.monotonic()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.monotonic() - wall0, _children_cpu() - cpu0
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, cpu, done.stdout, done.stderr


def fetch_sqlalchemy(into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                    "sqlalchemy", "-d", str(into)], check=True)
    archive = next(into.glob("[Ss][Qq][Ll][Aa]lchemy-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return next(p for p in into.iterdir() if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="an unpacked source tree (default: download sqlalchemy's sdist)")
    parser.add_argument("--spores", type=int, default=os.cpu_count() or 1, help="local spores (default: CPUs)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hive-scan-bench-"))
    try:
        tree = (opts.tree or fetch_sqlalchemy(work / "src")).resolve()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
        env["XDG_CACHE_HOME"] = str(work / "cache")  # an empty findings cache
        py_files = sum(1 for _ in tree.rglob("*.py"))
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
        print(f"tree: {tree} ({py_files} .py files, {size / 1e6:.1f} MB in all), {os.cpu_count()} CPUs, "
              f"{opts.spores} spores", file=sys.stderr)
        rows: list[tuple[str, float, float, str]] = []

        wall_b, cpu_b, out, _ = timed([str(BIN / "bandit"), "-r", str(tree), "-q", "-f", "json"], cwd=work, env=env,
                                      ok=(0, 1))
        bandit_findings = len(json.loads(out)["results"])
        rows.append(("bandit -r", wall_b, cpu_b, f"{bandit_findings} findings"))
        wall_d, cpu_d, out, _ = timed([str(BIN / "detect-secrets"), "scan", "--all-files", "."], cwd=tree, env=env)
        secrets = sum(len(v) for v in json.loads(out)["results"].values())
        rows.append(("detect-secrets scan --all-files", wall_d, cpu_d, f"{secrets} secrets"))
        tools_wall, tools_cpu = wall_b + wall_d, cpu_b + cpu_d
        rows.append(("**the tools, one after the other**", tools_wall, tools_cpu, ""))

        hive = [sys.executable, "-m", "hive_framework", "scan", str(tree), "--format", "json", "-n", str(opts.spores),
                "--allow-incomplete"]
        runs: dict[str, tuple[float, float, dict[str, Any]]] = {}
        for name in ("first", "unchanged", "one file changed"):
            if name == "one file changed":
                victim = next(iter(sorted(tree.rglob("*.py"))))
                victim.write_text(victim.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
            wall, cpu, out, _ = timed(hive, cwd=work, env=env)
            report = json.loads(out)
            runs[name] = (wall, cpu, report)
            summary = report["summary"]
            by_tool: dict[str, int] = {}
            for finding in report["findings"]:
                by_tool[finding["tool"]] = by_tool.get(finding["tool"], 0) + 1
            note = (f"{summary['files_scanned']} files ({summary['cached']} cached), {summary['shards']} shards; "
                    f"bandit {by_tool.get('bandit', 0)}, detect-secrets {by_tool.get('detect-secrets', 0)}, "
                    f"dependencies {by_tool.get('dependencies', 0)}; {summary['skipped']} skipped")
            rows.append((f"hive scan ({name})", wall, cpu, note))

        print("| run | wall s | CPU s | notes |\n|---|---:|---:|---|")
        for name, wall, cpu, note in rows:
            print(f"| {name} | {wall:.1f} | {cpu:.1f} | {note} |")
        first_wall, first_cpu, _ = runs["first"]
        print(f"\nhive scan / tools: wall {first_wall / tools_wall:.2f}x, CPU {first_cpu / tools_cpu:.2f}x; "
              f"unchanged rescan {first_wall / runs['unchanged'][0]:.1f}x faster than the first scan")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
