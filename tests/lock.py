"""The lock (requirements/*.txt, compiled by scripts/lock), read: its pins, their markers,
hashes and origins, and which of them apply to a given Python."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parent.parent / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]
    via: tuple[str, ...]

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def pins(file: str) -> list[Pin]:
    """The pins of a compiled requirements file, with their hashes and ``# via`` notes."""
    text = (LOCK / file).read_text(encoding="utf-8")
    found = []
    for block in re.split(r"\n(?=\S)", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith("#"):
            continue
        head = lines[0].removesuffix("\\").strip()
        requirement = Requirement(head)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", head
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))
        via = [
            line.strip().removeprefix("#").strip().removeprefix("via ")
            for line in lines
            if line.strip().startswith("#")
        ]
        found.append(
            Pin(
                canonicalize_name(requirement.name),
                Version(specifier.version),
                requirement.marker,
                hashes,
                tuple(v for v in via if v and v != "via" and not v.startswith("--hash")),
            )
        )
    return found


def in_environment(file: str, environment: dict[str, str]) -> dict[str, Pin]:
    chosen: dict[str, Pin] = {}
    for pin in pins(file):
        if pin.applies(environment):
            assert pin.name not in chosen, f"{file}: {pin.name} pinned twice for {environment}"
            chosen[pin.name] = pin
    return chosen


def marker_environment(python: str | None = None) -> dict[str, str]:
    """The markers' values of this machine, for ``python`` (a full version) when given."""
    environment = {name: str(value) for name, value in default_environment().items()}
    if python is not None:
        environment |= {
            "python_full_version": python,
            "python_version": ".".join(python.split(".")[:2]),
        }
    return environment | {"extra": ""}
