"""harness/processes.py's free ports: never one handed out before, even when the kernel
gives it again (as it did to two of three Sentinels made before either started)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from harness import processes


class _Probe:
    """A socket whose bind to port 0 gets the next of the ports the kernel is made to give."""

    def __init__(self, given: Iterator[int]) -> None:
        self.given = given
        self.port = 0

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.given)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_gives_twice_is_handed_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = iter([41001, 41001, 41001, 41002])
    fake: Any = SimpleNamespace(socket=lambda: _Probe(given))
    monkeypatch.setattr(processes, "socket", fake)
    monkeypatch.setattr(processes, "_HANDED_OUT", set())

    assert [processes.free_port(), processes.free_port()] == [41001, 41002]


def test_free_ports_are_free_and_distinct() -> None:
    ports = [processes.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it
