"""The JavaScript client's own parts (``clients/js``): its unit tests under ``node --test``, its
hand-written types checked by ``tsc --strict`` against a file that uses them, its package
(no dependencies, the files it names), and the dashboard's copy of it, byte for byte. Its
behaviour against the service, under faults, is tests/test_clients.py's (in Node) and
tests/test_dashboard.py's (in Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from presence.web.dashboard import ASSETS
from tests.clients import node

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "js"
MODULE = PACKAGE / "presence.js"
TYPES = PACKAGE / "presence.d.ts"
DASHBOARD_COPY = ROOT / "presence" / "web" / "dashboard" / "presence.js"
UNIT_TESTS = sorted((PACKAGE / "test").glob("*.test.js"))
TSC = ["--strict", "--noEmit", "--target", "es2020", "--module", "es2020"]
TSC += ["--moduleResolution", "node", "--lib", "es2020,dom"]


def tsc() -> str:
    found = shutil.which("tsc")
    if found is None:
        raise RuntimeError("tsc is not installed: scripts/test installs Debian's node-typescript")
    return found


def test_the_unit_tests_pass_under_node_test() -> None:
    assert len(UNIT_TESTS) >= 2
    result = subprocess.run(
        [node(), "--test", *map(str, UNIT_TESTS)],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    summary = dict(re.findall(r"^# (pass|fail) (\d+)$", result.stdout, re.MULTILINE))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert summary["fail"] == "0"
    assert int(summary["pass"]) >= 14, summary


def test_the_types_check_with_tsc_strict_and_catch_a_wrong_use(tmp_path: Path) -> None:
    usage = PACKAGE / "test" / "types.ts"
    result = subprocess.run(
        [tsc(), *TSC, str(usage)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Not vacuous: the same file with a number for an identity is refused.
    wrong = tmp_path / "wrong.ts"
    text = usage.read_text(encoding="utf-8").replace("'../presence.js'", json.dumps(str(MODULE)))
    wrong.write_text(text.replace("view.isOnline('alice')", "view.isOnline(5)"), "utf-8")
    result = subprocess.run(
        [tsc(), *TSC, str(wrong)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "TS2345" in result.stdout, result.stdout


def test_every_class_the_types_declare_is_exported_by_the_module() -> None:
    declared = set(re.findall(r"^export class (\w+)", TYPES.read_text("utf-8"), re.MULTILINE))
    result = subprocess.run(
        [node(), "--input-type=module", "-e", f"console.log(JSON.stringify(Object.keys("
         f"await import({json.dumps(str(MODULE))}))))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert set(json.loads(result.stdout)) == declared


def test_the_package_has_no_dependency_and_names_files_that_exist() -> None:
    package = json.loads((PACKAGE / "package.json").read_text("utf-8"))
    assert not {"dependencies", "peerDependencies", "optionalDependencies"} & set(package)
    assert package["type"] == "module"
    assert package["engines"]["node"] == ">=18"
    entry = package["exports"]["."]
    assert (entry["types"], entry["default"]) == ("./presence.d.ts", "./presence.js")
    assert all((PACKAGE / name).is_file() for name in package["files"])


def test_the_dashboard_serves_the_client_byte_for_byte() -> None:
    assert DASHBOARD_COPY.read_bytes() == MODULE.read_bytes(), (
        "presence/web/dashboard/presence.js differs from clients/js/presence.js: copy it again"
    )
    assert ASSETS["presence.js"] == "text/javascript"
