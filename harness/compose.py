"""A Docker Compose project of the tests' own: docker-compose.yml run on the local Docker
engine under its own project name, with its own env file, stopped and removed by that name.

Only the local engine is used (``DOCKER_HOST`` and ``DOCKER_CONTEXT`` are dropped), so every
container, network and volume is one this engine created, and the published ports are on
this host's 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class DockerError(Exception):
    """A docker or compose command failed; the message has its output."""


def docker_environment() -> dict[str, str]:
    """This environment for docker and compose commands: the local engine, and no variable
    that would change what the compose file resolves to (``PRESENCE_*`` and ``COMPOSE_*`` would
    win over the env file)."""
    dropped = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
    return {
        name: value
        for name, value in os.environ.items()
        if name not in dropped and not name.startswith(("PRESENCE_", "COMPOSE_"))
    }


def run(
    command: Sequence[str], *, timeout: float, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a docker or compose command; with ``check``, a failure raises ``DockerError``."""
    try:
        result = subprocess.run(
            list(command),
            cwd=cwd,
            env=docker_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise DockerError(f"{' '.join(command)}: no answer within {timeout:.0f} s") from error
    if check and result.returncode != 0:
        raise DockerError(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def compose_command() -> list[str]:
    """``docker compose`` (v2) when the engine's client has it, else ``docker-compose`` (1.29,
    what scripts/test installs from Debian)."""
    version = ["docker", "compose", "version"]
    if shutil.which("docker") and run(version, timeout=30, check=False).returncode == 0:
        return ["docker", "compose"]
    binary = shutil.which("docker-compose")
    if binary is None:
        raise DockerError("neither `docker compose` nor `docker-compose` is installed")
    return [binary]


def engine_problem() -> str | None:
    """Why the local Docker engine cannot be used (None: it answers)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    result = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False)
    if result.returncode != 0:
        return f"the Docker engine does not answer: {result.stderr.strip()[-500:]}"
    return None


def base_images(compose_file: Path, dockerfile: Path) -> list[str]:
    """The images the stack starts from: every ``image:`` of the compose file and every
    ``FROM`` of the Dockerfile that is not one of its own stages."""
    services = yaml.safe_load(compose_file.read_text(encoding="utf-8"))["services"]
    images = [str(service["image"]) for service in services.values() if "image" in service]
    stages: set[str] = set()
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            if match[1] not in stages:
                images.append(match[1])
            if match[2]:
                stages.add(match[2])
    return sorted(set(images))


def missing_images(images: Iterable[str]) -> list[str]:
    return [
        image
        for image in images
        if run(["docker", "image", "inspect", image], timeout=30, check=False).returncode != 0
    ]


def poll(condition: Callable[[], bool], within: float, what: str, every: float = 0.2) -> float:
    """Polls ``condition`` until it holds; returns the seconds it took. Raises
    ``TimeoutError`` naming ``what`` after ``within`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


USED_PROJECTS: set[str] = set()
"""The compose projects (and labels) this process has made containers, networks or volumes
under: what its run must leave nothing of (harness/leaks.py), and nothing else."""


class ComposeProject:
    """docker-compose.yml of ``root``, as the project ``name``, with the settings of
    ``env_file`` (read instead of ``root``/.env)."""

    def __init__(self, root: Path, name: str, env_file: Path) -> None:
        USED_PROJECTS.add(name)
        self.root = root
        self.name = name
        self.env_file = env_file
        self.command = [
            *compose_command(),
            "--project-name", name,
            "--env-file", str(env_file),
            "--file", str(root / "docker-compose.yml"),
        ]  # fmt: skip

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``docker compose <args>`` for this project, from the project directory."""
        return run([*self.command, *args], timeout=timeout, check=check, cwd=self.root)

    def exec_args(self, service: str, *command: str) -> list[str]:
        """The argv of ``docker compose exec`` running ``command`` in ``service``'s first
        container, without a terminal (for a Popen)."""
        return [*self.command, "exec", "-T", service, *command]

    def containers(self, service: str, *, all: bool = False) -> list[str]:
        """The ids of ``service``'s containers (running ones; ``all``: stopped ones too)."""
        result = run(
            [
                "docker", "ps", "--quiet", "--no-trunc", *(["--all"] if all else []),
                "--filter", f"label=com.docker.compose.project={self.name}",
                "--filter", f"label=com.docker.compose.service={service}",
            ],
            timeout=30,
        )  # fmt: skip
        return result.stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        """``docker inspect`` of a container."""
        [details] = json.loads(run(["docker", "inspect", container], timeout=30).stdout)
        return dict(details)

    def health(self, service: str) -> list[str]:
        """The health of each running container of ``service`` (``healthy``, ``starting``,
        ``unhealthy``, or ``running`` for one without a health check)."""
        states = []
        for container in self.containers(service):
            state = self.inspect(container)["State"]
            states.append(state["Health"]["Status"] if "Health" in state else state["Status"])
        return states

    def resources(self) -> dict[str, list[str]]:
        """Every container, network and volume of this project left in the engine."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {}
        for kind, listing in (
            ("containers", ["docker", "ps", "--all", "--quiet", "--filter", label]),
            ("networks", ["docker", "network", "ls", "--quiet", "--filter", label]),
            ("volumes", ["docker", "volume", "ls", "--quiet", "--filter", label]),
        ):
            found[kind] = run(listing, timeout=30).stdout.split()
        return found

    def logs(self) -> str:
        """The last lines of every service's output, for a failure message."""
        return self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60).stdout

    def down(self) -> None:
        """Stops and removes everything of the project, its volumes included."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=120)


def env_file(
    path: Path, example: Path, values: Mapping[str, str], drop: Iterable[str] = ()
) -> Path:
    """A copy of ``example`` (.env.example) with these values set and the ``drop`` variables
    left out, written to ``path`` (readable by its owner only: it holds secrets)."""
    values = dict(values)
    dropped = set(drop)
    lines = []
    for line in example.read_text(encoding="utf-8").splitlines():
        name = line.partition("=")[0].strip()
        if not line.startswith("#") and name in dropped:
            continue
        if not line.startswith("#") and name in values:
            line = f"{name}={values.pop(name)}"
        lines.append(line)
    lines += [f"{name}={value}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
