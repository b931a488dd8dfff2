"""Real processes on free ports: ``redis-server``, a Redis Cluster of them, ``presence serve``
and any other server, each stopped by its own pid (never the machine's own Redis)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_RUNNING: dict[int, subprocess.Popen[bytes]] = {}
"""Every process started here and not yet stopped, by pid (``stop_all`` ends them)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, within: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Returns once something accepts connections on ``port``; fails after ``within`` seconds,
    or at once when ``process`` (the one meant to listen) has exited."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a ``presence`` subprocess: this one's minus PRESENCE_*, plus these
    settings (``redis_url="..."`` is ``PRESENCE_REDIS_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update({f"PRESENCE_{name.upper()}": value for name, value in settings.items()})
    return env


def _spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
    _RUNNING[process.pid] = process
    return process


def stop(
    process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, within: float = 15.0
) -> None:
    """Stops a process started here, by its pid; SIGKILL when it outlives ``within``."""
    if process is None:
        return
    _RUNNING.pop(process.pid, None)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def stop_all() -> None:
    """Kills every process started here that is still running."""
    for process in list(_RUNNING.values()):
        stop(process, signal.SIGKILL)


class ServerProcess:
    """A process listening on a port of its own, its output in a file."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        *,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.log = log
        self.port = port
        self.env = dict(env) if env is not None else dict(os.environ)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, *args: str, within: float = 20.0) -> ServerProcess:
        """Starts it (with ``args`` added to its command) and waits until it listens."""
        self.process = _spawn([*self.command, *args], self.log, self.env)
        wait_for_port(self.port, within, self.process)
        return self

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Sends ``signum`` and waits for the process to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=15)
        if self.process is not None:
            _RUNNING.pop(self.process.pid, None)
        self.process = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        stop(self.process)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


class Service(ServerProcess):
    """``presence serve`` on a free port with these settings (``redis_url="..."``), run
    after ``prefix`` (``taskset -c 1``, say)."""

    def __init__(self, log: Path, *, prefix: Sequence[str] = (), **settings: str) -> None:
        port = free_port()
        super().__init__(
            [*prefix, sys.executable, "-m", "presence", "serve"],
            log,
            port=port,
            env=service_env(port=str(port), **settings),
        )

    def start(self, *flags: str, within: float = 20.0) -> Service:
        super().start(*flags, within=within)
        return self


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: scripts/test and bench/run install it")
    return found


class RedisServer:
    """A redis-server of our own: a free port, a private directory, no snapshots.
    ``appendonly`` keeps its data across ``stop``/``start`` (fsync at every write)."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        prefix: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        self.binary = _binary("redis-server")
        self.directory = directory
        self.appendonly = appendonly
        self.prefix = list(prefix)
        self.options = list(options)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            *self.prefix,
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            *self.options,
        ]  # fmt: skip
        self.process = _spawn(command, self.directory / "redis.log")
        wait_for_port(self.port, 10.0, self.process)
        return self

    def stop(self) -> None:
        """Kills it (SIGKILL: as abrupt as a crash)."""
        stop(self.process, signal.SIGKILL)
        self.process = None


class RedisClusterNodes:
    """A Redis Cluster of our own: ``size`` primaries (no replicas), each a redis-server on
    free ports (client and cluster bus) in a private directory, stopped by their own pids.
    ``cluster-require-full-coverage no``: while a node is down, the slots of the others keep
    working. A short ``cluster-node-timeout`` makes failures known quickly."""

    def __init__(self, directory: Path, size: int = 3, node_timeout_ms: int = 1000) -> None:
        self.binary, self.cli = _binary("redis-server"), _binary("redis-cli")
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_port() for _ in range(size)]
        self.bus_ports = [free_port() for _ in range(size)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A URL naming the first node: a cluster client finds the others by itself."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def url_of(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}"

    def start_node(self, port: int) -> None:
        bus_port = self.bus_ports[self.ports.index(port)]
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port", str(port),
            "--cluster-port", str(bus_port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        self.processes[port] = _spawn(command, directory / "redis.log")
        wait_for_port(port, 10.0, self.processes[port])

    def kill_node(self, port: int) -> None:
        stop(self.processes.pop(port, None), signal.SIGKILL)

    def _cli(self, port: int, *args: str) -> str:
        result = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def state_of(self, port: int) -> str:
        """``cluster_state`` as this node sees it (``ok`` or ``fail``), "" when unreachable."""
        try:
            info = self._cli(port, "cluster", "info")
        except (subprocess.SubprocessError, OSError):
            return ""
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_until_ok(self, within: float = 30.0) -> None:
        """Waits until every running node says ``cluster_state:ok``."""
        deadline = time.monotonic() + within
        while not all(self.state_of(port) == "ok" for port in self.processes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test cluster did not become ok within {within}s")
            time.sleep(0.05)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.wait_until_ok()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill_node(port)
