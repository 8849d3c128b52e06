"""OTA across real processes: supervised spores on a real Redis, updated, refused and rolled back.

Each spore runs as ``hive ota spore`` (a supervisor and its spore child) with its own state folder; packages
travel through Redis. Nobody restarts a spore by hand: every restart here is the supervisor's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import attrs
import pytest
from ota_helpers import (
    OTAHive,
    flip_byte,
    link_member,
    make_package,
    make_wheel,
    ota_section,
    rewrite_zip,
    run_on,
    toml_text,
    version_app,
    wait_online,
)

from hive_plugin_ota import UpdatePackage

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_v1_to_v2_reaches_every_targeted_spore_and_no_other(ota_hive: OTAHive) -> None:
    # Given three supervised spores with nothing installed, and v1 rolled out to all of them, one canary first
    spores = {name: ota_hive.spore(name) for name in ("a", "b", "c")}
    make_wheel(ota_hive.tmp / "wheels", "tinydep", "1.0", "WORD = 'two'\n")
    v1 = ota_hive.package("1.0.0", version_app('"v1"'))
    v2 = ota_hive.package("2.0.0", version_app('"v" + str(len(tinydep.WORD) - 1) + "-" + tinydep.WORD',
                                               extra="import tinydep"), requirements=["tinydep==1.0"])
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a", "b", "c"])
        first = await ota.rollout(v1, ["a", "b", "c"], canary=1, timeout=60)
        assert first["ok"], first
        assert first["canary"] == ["a"]
        assert {name: await run_on(ota.broker, name) for name in spores} == {"a": "v1", "b": "v1", "c": "v1"}
        supervisors = {name: proc.pid for name, proc in spores.items()}

        # When v2 (whose result comes from a requirement of its own) goes to a and b only
        second = await ota.rollout(v2, ["a", "b"], timeout=90)

        # Then a and b answer v2, c still answers v1, and every supervisor is the one started at first
        assert second["ok"], second
        assert {n: second["nodes"][n]["state"] for n in ("a", "b")} == {"a": "committed", "b": "committed"}
        assert await run_on(ota.broker, "a") == "v2-two"
        assert await run_on(ota.broker, "b") == "v2-two"
        assert await run_on(ota.broker, "c") == "v1"
        assert {name: proc.pid for name, proc in spores.items()} == supervisors
        assert all(proc.proc.poll() is None for proc in spores.values())
        versions = {n.node_id: n.code_version for n in await ota.broker.get_nodes()}
        assert versions == {"a": "2.0.0", "b": "2.0.0", "c": "1.0.0"}
        # the requirement went into the release's own site-packages, never into the running environment
        current = spores["a"].current()
        assert current is not None
        release = spores["a"].root / current
        assert (release / "site-packages" / "tinydep" / "__init__.py").is_file()
        assert subprocess.run([sys.executable, "-c", "import tinydep"], capture_output=True).returncode != 0
        with zipfile.ZipFile(v1.path) as archive:
            assert not [n for n in archive.namelist() if "__pycache__" in n or n.endswith(".pyc")]
        status = await ota.status()
        assert {row["node"]: (row["version"], row["state"]) for row in status} == {
            "a": ("2.0.0", "committed"), "b": ("2.0.0", "committed"), "c": ("1.0.0", "committed"),
        }

        # And an operator's signed rollback takes b back to v1
        back = await ota.rollback(["b"], timeout=60)
        assert back["ok"], back
        assert await run_on(ota.broker, "b") == "v1"
        assert await run_on(ota.broker, "a") == "v2-two"


async def test_bad_packages_are_rejected_with_a_reason_and_v1_keeps_serving(ota_hive: OTAHive) -> None:
    # Given a supervised spore running v1
    spore = ota_hive.spore("a")
    tmp = ota_hive.tmp
    v1 = ota_hive.package("1.0.0", version_app('"v1"'))
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a"])
        assert (await ota.rollout(v1, ["a"], timeout=60))["ok"]
        child = next(n.pid for n in await ota.broker.get_nodes() if n.node_id == "a")
        releases_before = spore.releases()

        # ...and a set of bad v2 packages
        def v2() -> UpdatePackage:
            return ota_hive.package("2.0.0", version_app('"v2"'))

        good = v2()
        member = "app/otaapp/__init__.py"
        flipped = v2()
        flipped_same_sum = attrs.evolve(flipped, path=flip_byte(flipped, tmp / "bad" / "flipped.zip", member))
        recomputed = v2()
        flipped_new_sum = UpdatePackage.from_file(flip_byte(recomputed, tmp / "bad" / "flipped2.zip", member))
        stranger = make_package(ota_hive.keys["stranger"], tmp / "stranger", "2.0.0", version_app('"evil"'))
        dotdot = rewrite_zip(good, tmp / "bad" / "dotdot.zip",
                             extra=[(zipfile.ZipInfo("../evil.py"), b"print('pwned')\n")])
        link = rewrite_zip(v2(), tmp / "bad" / "link.zip",
                           extra=[link_member("app/otaapp/evil_link.py", "../../../../evil_target")])
        unsigned = attrs.evolve(v2(), signature={})
        downgrade = ota_hive.package("0.9.0", version_app('"v0.9"'))
        cases = {
            "flipped byte": (flipped_same_sum, "checksum mismatch"),
            "flipped byte, checksum recomputed": (flipped_new_sum, "otaapp/__init__.py"),
            "untrusted key": (stranger, "does not trust"),
            "../ member": (dotdot, "'..'"),
            "symlink member": (link, "symbolic link"),
            "unsigned": (unsigned, "not signed"),
            "downgrade": (downgrade, "not newer than 1.0.0"),
        }

        # When each is published to the spore
        reasons = {}
        for case, (package, _) in cases.items():
            outcome = await ota.rollout(package, ["a"], timeout=30)
            assert not outcome["ok"], case
            assert outcome["nodes"]["a"]["state"] == "rejected", (case, outcome)
            reasons[case] = outcome["nodes"]["a"]["reason"]

        # Then each was rejected for its own reason, nothing was written outside the releases, no new release
        # appeared, and the same v1 process still serves tasks
        for case, (_, phrase) in cases.items():
            assert phrase in reasons[case], (case, reasons[case])
        assert not [p for p in tmp.rglob("evil*") if "src-" not in str(p)], "a member escaped"
        assert spore.releases() == releases_before
        assert await run_on(ota.broker, "a") == "v1"
        assert next(n.pid for n in await ota.broker.get_nodes() if n.node_id == "a") == child
        assert (await ota.status())[0]["state"] == "rejected"


async def test_a_v3_that_fails_to_import_is_rolled_back_and_stops_the_canary_rollout(ota_hive: OTAHive) -> None:
    # Given two supervised spores on v2
    spores = {name: ota_hive.spore(name) for name in ("a", "b")}
    v2 = ota_hive.package("2.0.0", version_app('"v2"'))
    v3 = ota_hive.package("3.0.0", version_app('"v3"', extra="import module_that_v3_forgot"))
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a", "b"])
        assert (await ota.rollout(v2, ["a", "b"], timeout=60))["ok"]
        b_child = next(n.pid for n in await ota.broker.get_nodes() if n.node_id == "b")

        # When v3, which cannot import, is rolled out with a as the canary
        started = time.monotonic()
        outcome = await ota.rollout(v3, ["a", "b"], canary=1, timeout=60)
        elapsed = time.monotonic() - started

        # Then a went back to v2 by itself within the health window, saying why, and b was never touched
        assert not outcome["ok"]
        assert outcome["stopped_at"] == "a"
        assert outcome["skipped"] == ["b"]
        report = outcome["nodes"]["a"]
        assert report["state"] == "rolled_back", report
        assert "module_that_v3_forgot" in report["reason"]
        assert report["version"] == "2.0.0"
        assert elapsed < ota.settings.health_window
        assert await run_on(ota.broker, "a") == "v2"
        assert await run_on(ota.broker, "b") == "v2"
        assert next(n.pid for n in await ota.broker.get_nodes() if n.node_id == "b") == b_child
        assert (spores["a"].current() or "").startswith("releases/2.0.0-")

    # And `hive ota status` shows it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "REDIS_"))}
    env.update(ota_hive.config.to_env())
    env["HIVE_CONFIG"] = str(ota_hive.toml)
    shown = subprocess.run([sys.executable, "-m", "hive_framework", "ota", "status", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = {row["node"]: row for row in json.loads(shown.stdout)}
    assert (rows["a"]["version"], rows["a"]["state"]) == ("2.0.0", "rolled_back")
    assert (rows["b"]["version"], rows["b"]["state"]) == ("2.0.0", "committed")


async def test_a_release_that_hangs_or_fails_its_health_check_is_rolled_back(ota_hive: OTAHive) -> None:
    # Given a spore on v1 whose health window is 4 seconds
    section = ota_section(ota_hive.keys, ota_hive.tmp, health_window=4)
    ota_hive.toml.write_text(toml_text(section), encoding="utf-8")
    ota_hive.spore("a")
    v1 = ota_hive.package("1.0.0", version_app('"v1"'))
    hangs = ota_hive.package("2.0.0", version_app('"v2"', extra="import time; time.sleep(60)"))
    sick = ota_hive.package("2.0.1", version_app('"v2.0.1"') + """
        def ota_health_check():
            raise RuntimeError("the database is unreachable")
    """)
    async with ota_hive.manager() as ota:
        await wait_online(ota.broker, ["a"])
        assert (await ota.rollout(v1, ["a"], timeout=60))["ok"]

        # When a release that never finishes importing is installed
        started = time.monotonic()
        hung = (await ota.rollout(hangs, ["a"], timeout=60))["nodes"]["a"]
        elapsed = time.monotonic() - started

        # Then it is rolled back once the window is over, and v1 serves again
        assert hung["state"] == "rolled_back", hung
        assert "not healthy within 4s" in hung["reason"]
        assert 4 <= elapsed < 20
        assert await run_on(ota.broker, "a") == "v1"

        # When a release imports but its own health check fails
        failed = (await ota.rollout(sick, ["a"], timeout=60))["nodes"]["a"]

        # Then the probe says why and v1 is back
        assert failed["state"] == "rolled_back", failed
        assert "the database is unreachable" in failed["reason"]
        assert await run_on(ota.broker, "a") == "v1"
