"""Nothing a test run starts outlives it: a pytest plugin (``-p harness.leaks``, in
pyproject.toml's addopts).

Every process the run starts carries the run's mark in its environment (``HARNESS_RUN``, set
when the run begins and inherited by every child, grandchild and orphan: an orphan re-parented
away from pytest is not its child any more, but its environment still says whose it is).
When the run ends, every process started through ``harness.processes`` still running is
killed by its pid; then any other process bearing the mark, and any Docker container, network
or volume of the compose projects it used, is a leak: it is named, removed, and the run fails.
The Docker engine itself is not the run's: ``scripts/test`` starts it before pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from harness.compose import USED_PROJECTS
from harness.processes import stop_all

MARK = "HARNESS_RUN"
"""The environment variable of the mark: the ids of the runs a process belongs to,
comma-separated (a run started by a test of another run belongs to both)."""

SETTLE_SECONDS = 5.0
"""How long a process stopped at the end may take to be gone before it counts as left."""

_RUN = pytest.StashKey[str]()


def mark_run() -> str:
    """Marks this process, and so everything it starts from now on, as a new run's; returns
    the run's id."""
    run = uuid.uuid4().hex[:12]
    outer = os.environ.get(MARK)
    os.environ[MARK] = f"{outer},{run}" if outer else run
    return run


def marked(run: str) -> dict[int, str]:
    """The processes bearing ``run``'s mark, but this one: pid -> command line."""
    found = {}
    needle = f"{MARK}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        for variable in environ:
            if variable.startswith(needle) and run in variable[len(needle) :].decode().split(","):
                found[int(entry.name)] = command.decode(errors="replace") or f"[{entry.name}]"
    return found


def leftover_processes(run: str, within: float = SETTLE_SECONDS) -> dict[int, str]:
    """The run's processes still there once ``within`` seconds have passed (a process killed a
    moment ago may still be exiting)."""
    deadline = time.monotonic() + within
    while (left := marked(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def docker_leftovers() -> list[str]:
    """Containers, networks and volumes of the compose projects this run used ([] without an
    engine, or when it used none: another run of the same checkout may be using them)."""
    if shutil.which("docker") is None or not USED_PROJECTS:
        return []
    listings = {
        "container": ["docker", "ps", "--all", "--format", '{{.Names}} {{.Label "%s"}}'],
        "network": ["docker", "network", "ls", "--format", '{{.Name}} {{.Label "%s"}}'],
        "volume": ["docker", "volume", "ls", "--format", '{{.Name}} {{.Label "%s"}}'],
    }
    found: list[str] = []
    for kind, command in listings.items():
        command[-1] %= "com.docker.compose.project"
        try:
            listing = subprocess.run(
                command, capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return found  # no engine answering: nothing of ours can be in it
        for line in listing.splitlines():
            name, _, project = line.partition(" ")
            if project in USED_PROJECTS:
                found.append(f"{kind} {name} (project {project})")
    return found


def remove_docker(leftovers: list[str]) -> None:
    for leftover in leftovers:
        kind, name = leftover.split()[:2]
        command = {
            "container": ["docker", "rm", "--force", "--volumes", name],
            "network": ["docker", "network", "rm", name],
            "volume": ["docker", "volume", "rm", "--force", name],
        }[kind]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(command, capture_output=True, timeout=60, check=False)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUN] = mark_run()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash[_RUN]
    stop_all()
    left = leftover_processes(run)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Containers first: a network or volume in use cannot be removed.
    docker = sorted(docker_leftovers(), key=lambda item: not item.startswith("container"))
    remove_docker(docker)
    problems = [f"process {pid}: {command}" for pid, command in sorted(left.items())] + docker
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {problem}" for problem in problems)
        message = f"left running when the run ended (now removed):\n{lines}"
        if reporter is not None:
            reporter.write_sep("=", "leaks", red=True)
            reporter.write_line(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
