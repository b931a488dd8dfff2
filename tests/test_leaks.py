"""harness/leaks.py: a run whose test fails on purpose leaves no process behind, and a run
that leaves one (an orphan re-parented away from pytest) fails, naming it, and removes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.leaks import MARK, marked

ROOT = Path(__file__).resolve().parent.parent

FAILING = """
from harness.processes import RedisServer

def test_fails_on_purpose(tmp_path):
    RedisServer(tmp_path / "redis").start()  # never stopped by the test
    assert False, "on purpose"
"""

ORPHANING = """
import subprocess

def test_leaves_an_orphan():
    # The shell exits at once: its sleep is re-parented to init, no child of pytest's.
    subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], check=True)
"""


def run_inner(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_inner.py"
    test.write_text(textwrap.dedent(source), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "harness.leaks", "-p", "no:cacheprovider",
         "-q", "--rootdir", str(tmp_path), str(test)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def inner_runs_processes() -> dict[int, str]:
    """Processes of any run started from this one's tests: their mark names one run more."""
    runs = os.environ[MARK].split(",")
    return {pid: command for pid, command in marked(runs[-1]).items() if depth(pid) > len(runs)}


def depth(pid: int) -> int:
    """How many runs the mark of process ``pid`` names (0: none, or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return 0
    for variable in environ:
        if variable.startswith(f"{MARK}=".encode()):
            return len(variable.split(b"=", 1)[1].split(b","))
    return 0


def test_a_test_failing_on_purpose_leaves_no_process(tmp_path: Path) -> None:
    result = run_inner(tmp_path, FAILING)
    assert result.returncode == 1, result.stdout
    assert "on purpose" in result.stdout
    assert "left running" not in result.stdout  # stopped by its pid, not found later
    assert inner_runs_processes() == {}


def test_a_process_left_running_fails_the_run_and_is_removed(tmp_path: Path) -> None:
    result = run_inner(tmp_path, ORPHANING)
    assert result.returncode == 1, result.stdout
    assert "1 passed" in result.stdout
    assert "left running when the run ended" in result.stdout
    assert "sleep 300" in result.stdout
    assert inner_runs_processes() == {}
