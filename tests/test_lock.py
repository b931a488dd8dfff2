"""The lock (requirements/*.txt, made by scripts/lock) agrees with pyproject.toml and with
what .venv holds: every range declared is locked, to a release inside it, for every Python
the project installs on; nothing is locked that nothing asks for; every pin has its hashes;
the service's and the build's subsets pin exactly what the whole lock pins."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from presence import __version__
from tests.lock import LOCK, in_environment, marker_environment, pins

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CLIENT = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text("utf-8"))
OURS = {"presence", "presence-client"}
"""The distributions of this repository, installed editable by scripts/bootstrap."""

ENVIRONMENTS = {
    # The image's Python (Debian bookworm's, which the stand-in image is), below 3.11.3: redis-py
    # needs async-timeout there.
    "3.11.2": {"python_version": "3.11", "python_full_version": "3.11.2"},
    "3.11.7": {"python_version": "3.11", "python_full_version": "3.11.7"},
    "3.12.8": {"python_version": "3.12", "python_full_version": "3.12.8"},
    "3.13.1": {"python_version": "3.13", "python_full_version": "3.13.1"},
}
"""Pythons the project installs on (requires-python >= 3.11), on Linux."""

LINUX = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
}


def environments() -> Iterator[tuple[str, dict[str, str]]]:
    for python, versions in ENVIRONMENTS.items():
        yield python, {**LINUX, **versions, "extra": ""}


def declared() -> dict[str, list[Requirement]]:
    """What pyproject.toml asks for, by the lock file that must hold it."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    return {
        "service.txt": [Requirement(r) for r in project["dependencies"]],
        "dev.txt": [Requirement(r) for r in [*project["dependencies"], *extras["test"]]]
        + [Requirement(r) for r in extras["bench"]],
        "build.txt": [Requirement(r) for r in PYPROJECT["build-system"]["requires"]],
    }


@pytest.mark.parametrize("file", ["service.txt", "dev.txt", "build.txt"])
def test_every_declared_range_is_locked_inside_it_on_every_python(file: str) -> None:
    for python, environment in environments():
        locked = in_environment(file, environment)
        for requirement in declared()[file]:
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{file} lacks {requirement} on Python {python}"
            version = locked[name].version
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{file} pins {name}=={version}, outside pyproject.toml's {requirement}: "
                "run scripts/lock"
            )


def test_the_direct_requirements_of_the_lock_are_exactly_the_declared_ones() -> None:
    """uv notes each pin's origin: those pyproject.toml asks for directly must be what it
    declares now (a range added or removed without scripts/lock shows here)."""
    direct = {pin.name for pin in pins("dev.txt") if "presence (pyproject.toml)" in pin.via}
    wanted = {canonicalize_name(r.name) for r in declared()["dev.txt"]}
    assert direct == wanted


def test_the_build_backend_range_is_the_one_pyproject_builds_with() -> None:
    build_in = [
        Requirement(line.split("#")[0].strip())
        for line in (LOCK / "build.in").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    ]
    backend = {canonicalize_name(r.name): r for r in build_in}
    for requirement in declared()["build.txt"]:
        assert backend[canonicalize_name(requirement.name)] == requirement


@pytest.mark.parametrize("file", ["service.txt", "dev.txt", "build.txt"])
def test_every_pin_has_hashes(file: str) -> None:
    assert [pin.name for pin in pins(file) if not pin.hashes] == []


@pytest.mark.parametrize("file", ["service.txt", "build.txt"])
def test_the_subsets_pin_what_the_whole_lock_pins(file: str) -> None:
    whole = {
        (pin.name, pin.version, pin.marker and str(pin.marker)): pin for pin in pins("dev.txt")
    }
    for pin in pins(file):
        key = (pin.name, pin.version, pin.marker and str(pin.marker))
        assert key in whole, f"{file} pins {pin.name}=={pin.version}, dev.txt does not"
        assert set(pin.hashes) == set(whole[key].hashes), pin.name


def test_the_venv_holds_what_the_lock_pins() -> None:
    """scripts/bootstrap installed the lock, and nothing else, into the environment running
    this test."""
    locked = in_environment("dev.txt", marker_environment())
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) not in OURS
    }
    assert sorted(set(installed) - set(locked)) == []
    assert sorted(set(locked) - set(installed)) == []
    assert {n: (v, locked[n].version) for n, v in installed.items() if v != locked[n].version} == {}


def test_the_python_client_needs_aiohttp_alone_and_the_lock_holds_it_in_range() -> None:
    """A client-only install pulls none of the service's dependencies; the suite runs it on
    the aiohttp the lock pins, inside the client's own range."""
    requirements = [Requirement(r) for r in CLIENT["project"]["dependencies"]]
    assert [canonicalize_name(r.name) for r in requirements] == ["aiohttp"]
    for python, environment in environments():
        for file in ("service.txt", "dev.txt"):
            locked = in_environment(file, environment)["aiohttp"].version
            assert requirements[0].specifier.contains(locked), (file, python, locked)
    # scripts/bootstrap installed it (editable, without dependencies), as it is now.
    assert metadata.version("presence-client") == CLIENT["project"]["version"]


def test_the_project_states_one_version() -> None:
    """pyproject.toml's version (what pip installs, and the lock's fingerprint, so a new
    version reinstalls the project) is the code's ``__version__`` (the OpenAPI document's
    and the push requests' user-agent)."""
    assert PYPROJECT["project"]["version"] == __version__
    assert metadata.version("presence") == __version__
