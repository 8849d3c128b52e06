"""The Dockerfile's steps work: with a container engine the image is built; without one (this machine, most
CI) the build stage's steps run here, in a temporary root, and the runtime stage is checked step by step.

A broken step (a missing COPY source, a pip install that fails, a plugin build argument naming no plugin)
fails this test either way. The test prints which of the two it did.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_framework.config import HiveConfig
from hive_framework.stack import StackManager

dockerfile_parse = pytest.importorskip("dockerfile_parse")

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "ota"  # a small plugin, so the plugin build argument is exercised

pytestmark = [
    pytest.mark.slow,
    # The image does not depend on the broker: build it once per Python, under the default broker's run.
    pytest.mark.skipif(os.environ.get("HIVE_TEST_BROKER", "streams") != "streams",
                       reason="the Dockerfile is checked in the streams broker's run"),
]

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _expand(text: str, values: dict[str, str]) -> str:
    return _VAR.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def _stages(path: Path) -> Iterator[tuple[str, dict[str, str], list[dict[str, Any]]]]:
    """(stage name, global ARG defaults, instructions) per FROM."""
    parser = dockerfile_parse.DockerfileParser(fileobj=path.open("rb"))
    global_args: dict[str, str] = {}
    name, steps = "", []
    started = False
    for item in parser.structure:
        op, value = item["instruction"], item["value"]
        if op == "COMMENT":
            continue
        if op == "FROM":
            if started:
                yield name, global_args, steps
            started, steps = True, []
            parts = value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else parts[0]
        elif not started and op == "ARG":
            key, _, default = value.partition("=")
            global_args[key] = default.strip('"')
        elif started:
            steps.append(item)
    if started:
        yield name, global_args, steps


class LocalBuild:
    """Runs the instructions of one stage in ``root`` (a folder standing for the image's ``/``)."""

    def __init__(self, root: Path, build_args: dict[str, str]) -> None:
        self.root = root
        self.build_args = build_args
        self.values: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.workdir = "/"
        self.done: list[str] = []
        shim = root.parent / "shim"
        shim.mkdir(exist_ok=True)
        if not (shim / "python").exists():
            (shim / "python").symlink_to(sys.executable)
        self.shim = shim

    def path(self, image_path: str) -> Path:
        full = image_path if image_path.startswith("/") else os.path.join(self.workdir, image_path)
        if full.startswith(str(self.root)):
            return Path(full)  # an ARG already pointed inside the root
        return self.root / full.lstrip("/")

    def run_step(self, op: str, value: str) -> None:
        if op == "ARG":
            key, _, default = value.partition("=")
            self.values[key] = self.build_args.get(key, default.strip('"'))
        elif op == "ENV":
            for pair in shlex.split(_expand(value.replace("\\\n", " "), {**self.values, **self.env})):
                key, _, val = pair.partition("=")
                self.env[key] = val
        elif op == "WORKDIR":
            self.workdir = _expand(value, self.values)
            self.path(self.workdir).mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(_expand(value, self.values))
            target = self.path(dest)
            for source in sources:
                origin = ROOT / source
                assert origin.exists(), f"COPY {source}: not in the build context"
                # a folder lands at dest (a new path, as every COPY of this Dockerfile uses); files go into it
                subprocess.run(["cp", "-a", str(origin), str(target)], check=True)
        elif op == "RUN":
            home = os.environ.get("HOME", str(self.root.parent))  # the pip cache, as a builder's cache mount
            env = {"PATH": f"{self.shim}{os.pathsep}{os.environ['PATH']}", "HOME": home,
                   **{k: os.environ[k] for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL") if k in os.environ},
                   **self.values, **self.env}
            done = subprocess.run(["sh", "-c", value], cwd=self.path(self.workdir), env=env,
                                  capture_output=True, text=True, timeout=900, check=False)
            assert done.returncode == 0, f"RUN {value[:80]}... failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        else:
            raise AssertionError(f"the local build does not know {op}")
        self.done.append(op)


def test_dockerfile_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dockerfile = ROOT / "Dockerfile"
    engine = StackManager(HiveConfig(), data_dir=tmp_path).container_engine()
    if engine is not None:
        tag = "hive-framework:test"
        subprocess.run([engine, "build", "-t", tag, "--build-arg", f"HIVE_PLUGINS={PLUGINS}", str(ROOT)],
                       check=True, timeout=1800)
        out = subprocess.run([engine, "run", "--rm", tag, "plugins"], check=True, capture_output=True, text=True)
        assert "ota" in out.stdout
        how = f"built the image with {engine}"
    else:
        stages = list(_stages(dockerfile))
        assert [name for name, _, _ in stages] == ["build", "runtime"]
        root = tmp_path / "rootfs"
        root.mkdir()
        venv = str(root / "opt" / "hive")
        build_args = {"VENV": venv, "HIVE_PLUGINS": PLUGINS}
        # build stage: every step runs here
        _, global_args, steps = stages[0]
        builder = LocalBuild(root, build_args)
        builder.values.update(global_args)
        for step in steps:
            builder.run_step(step["instruction"], step["value"])
        # runtime stage: system steps (useradd) are checked, not run; the venv it copies must be complete
        _, _, runtime = stages[1]
        ops = {s["instruction"]: s["value"] for s in runtime}
        copies = [s["value"] for s in runtime if s["instruction"] == "COPY"]
        assert copies == ["--from=build ${VENV} ${VENV}"]
        user = ops["USER"].split(":")[0]
        assert user not in ("0", "root") and "useradd" in ops["RUN"] and f"--uid {user}" in ops["RUN"]
        assert ops["ENTRYPOINT"] == '["hive"]'
        hive = Path(venv) / "bin" / "hive"
        listed = subprocess.run([str(hive), "plugins"], capture_output=True, text=True, check=True,
                                env={"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert '"ota"' in listed.stdout
        helped = subprocess.run([str(hive), "health", "--help"], capture_output=True, text=True, check=False,
                                env={"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert helped.returncode == 0, helped.stderr[-2000:]
        how = (f"no container engine: ran the build stage's {len(builder.done)} steps "
               f"({' '.join(builder.done)}) in {root} with HIVE_PLUGINS={PLUGINS}, checked the runtime stage's "
               f"{len(runtime)} steps")
    with capsys.disabled():
        print(f"\nDockerfile: {how}")


def test_a_plugin_build_argument_naming_no_plugin_fails_the_build(tmp_path: Path) -> None:
    (_, global_args, steps), _ = list(_stages(ROOT / "Dockerfile"))
    root = tmp_path / "rootfs"
    root.mkdir()
    builder = LocalBuild(root, {"VENV": str(root / "opt" / "hive"), "HIVE_PLUGINS": "no_such_plugin"})
    builder.values.update(global_args)
    with pytest.raises(AssertionError, match="no plugin folder plugins/no_such_plugin"):
        for step in steps:
            builder.run_step(step["instruction"], step["value"])
