"""Real processes on free ports: ``redis-server``, a Redis Cluster of them, a master with
replicas and Sentinels, ``presence serve`` and any other server, each stopped by its own pid
(never the machine's own Redis)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_RUNNING: dict[int, subprocess.Popen[bytes]] = {}
"""Every process started here and not yet stopped, by pid (``stop_all`` ends them)."""


_HANDED_OUT: set[int] = set()
"""Every port ``free_port`` gave. The kernel may give a port again as soon as the socket that
found it is closed: two servers made before either starts (three Sentinels) could get the
same one, and the second's start would find the first listening there."""


def free_port() -> int:
    """A port nothing listens on now, and never one this process was given before."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no port the kernel gives is new to this process")


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

    def shutdown(self) -> None:
        """Stops it as an operator does (SIGTERM: it syncs its files and exits)."""
        stop(self.process, signal.SIGTERM)
        self.process = None

    def copy_data(self, to: Path) -> Path:
        """A copy of its data files as they are now (with ``appendonly``, fsynced at every
        write: every write answered is in it), to restart it from later."""
        to.mkdir(parents=True)
        for name in ("appendonlydir", "dump.rdb"):
            source = self.directory / name
            if source.is_dir():
                shutil.copytree(source, to / name)
            elif source.exists():
                shutil.copy2(source, to / name)
        return to

    def restore_data(self, copy: Path | None) -> None:
        """Its data files replaced by ``copy`` (None: none, an empty Redis), while it is
        stopped: a restart from older data, as after a crash that lost the last writes or
        the restore of a backup."""
        assert self.process is None, "stop it first"
        for name in ("appendonlydir", "dump.rdb"):
            target = self.directory / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if copy is not None and (copy / name).is_dir():
                shutil.copytree(copy / name, target)
            elif copy is not None and (copy / name).exists():
                shutil.copy2(copy / name, target)

    def pause(self) -> None:
        """Freezes it (SIGSTOP): connections stay open, nothing is read or answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def redis_cli(port: int, *args: str) -> str:
    """The output of ``redis-cli -p port args...`` (a Redis or a Sentinel of our own)."""
    result = subprocess.run(
        [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def _wait(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within}s")
        time.sleep(0.05)


class SentinelProcess:
    """A Redis Sentinel of our own: a free port, a private directory and config file (which
    Sentinel rewrites as it learns), watching the master ``name``."""

    def __init__(
        self,
        directory: Path,
        master_port: int,
        *,
        name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        found = shutil.which("redis-sentinel")
        # Debian's redis-sentinel package; redis-server itself is a Sentinel with --sentinel.
        self.command = [found] if found else [_binary("redis-server")]
        self.directory = directory
        self.port = free_port()
        self.name = name
        self.config = "\n".join(
            [
                f"port {self.port}",
                "bind 127.0.0.1",
                f"dir {directory}",
                f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
                "",
            ]
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(self.config, encoding="utf-8")
        sentinel = [] if self.command[0].endswith("redis-sentinel") else ["--sentinel"]
        self.process = _spawn([*self.command, str(config), *sentinel], self.directory / "log")
        wait_for_port(self.port, 10.0, self.process)
        return self

    def ask(self, *args: str) -> str:
        return redis_cli(self.port, "sentinel", *args)

    def master_port(self) -> int | None:
        """The port of the master this Sentinel names now (None if it cannot be asked)."""
        try:
            lines = self.ask("get-master-addr-by-name", self.name).split()
        except (subprocess.SubprocessError, OSError):
            return None
        return int(lines[1]) if len(lines) == 2 else None

    def stop(self) -> None:
        stop(self.process, signal.SIGKILL)
        self.process = None


class RedisSentinels:
    """A master, ``replica_count`` replicas of it and ``sentinel_count`` Sentinels (quorum:
    a majority) watching them, all of our own, as a production Redis with Sentinel runs.
    ``down_after_ms``: how long the master must be unreachable before a failover begins."""

    NAME = "mymaster"

    def __init__(
        self,
        directory: Path,
        *,
        replica_count: int = 2,
        sentinel_count: int = 3,
        down_after_ms: int = 1000,
    ) -> None:
        # The first sync starts at once (Redis waits 5 s by default for more replicas to
        # share it); after a failover the replicas continue with a partial resync anyway.
        quick = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(directory / "master", options=quick)
        self.replicas = [
            RedisServer(directory / f"replica-{n}", options=quick) for n in range(replica_count)
        ]
        self.sentinels = [
            SentinelProcess(
                directory / f"sentinel-{n}",
                self.master.port,
                name=self.NAME,
                quorum=sentinel_count // 2 + 1,
                down_after_ms=down_after_ms,
            )
            for n in range(sentinel_count)
        ]
        self.servers = {server.port: server for server in [self.master, *self.replicas]}

    @property
    def addresses(self) -> str:
        """``PRESENCE_REDIS_SENTINELS``: every Sentinel's host:port."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def start(self, within: float = 30.0) -> RedisSentinels:
        self.master.start()
        for replica in self.replicas:
            replica.options += ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
        _wait(lambda: self.replicas_online(self.master.port) == len(self.replicas), within,
              "every replica to sync with the master")  # fmt: skip
        for sentinel in self.sentinels:
            sentinel.start()
        # Each Sentinel must know the replicas (from the master's INFO) and the other
        # Sentinels (from their hellos) before a failover can be agreed on and carried out.
        others = len(self.sentinels) - 1

        def known() -> bool:
            for sentinel in self.sentinels:
                master = dict(_pairs(sentinel.ask("master", self.NAME).split()))
                if master.get("num-slaves") != str(len(self.replicas)):
                    return False
                if master.get("num-other-sentinels") != str(others):
                    return False
            return True

        _wait(known, within, "the Sentinels to know the replicas and each other")
        return self

    def replicas_online(self, port: int) -> int:
        """How many replicas of the Redis on ``port`` have synced and follow its writes."""
        info = _info(port)
        return sum("state=online" in v for k, v in info.items() if k.startswith("slave"))

    def master_port(self) -> int | None:
        """The port of the master a majority of the running Sentinels name."""
        named = [port for s in self.sentinels if s.process and (port := s.master_port())]
        for port in set(named):
            if named.count(port) > len(self.sentinels) // 2:
                return port
        return None

    def wait_for_new_master(self, old_port: int, within: float = 30.0) -> RedisServer:
        """Waits until the Sentinels name another master, which says it is one."""

        def promoted() -> bool:
            port = self.master_port()
            return port is not None and port != old_port and _info(port).get("role") == "master"

        _wait(promoted, within, "a failover")
        port = self.master_port()
        assert port is not None
        return self.servers[port]

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            server.stop()


def _pairs(flat: Sequence[str]) -> list[tuple[str, str]]:
    return list(zip(flat[::2], flat[1::2], strict=False))


def _info(port: int) -> dict[str, str]:
    """INFO replication of a Redis of our own ({} when it cannot be asked)."""
    try:
        text = redis_cli(port, "info", "replication")
    except (subprocess.SubprocessError, OSError):
        return {}
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


class RedisClusterNodes:
    """A Redis Cluster of our own: ``size`` primaries, each with ``replicas`` replicas, each
    a redis-server on free ports (client and cluster bus) in a private directory, stopped by
    their own pids. ``cluster-require-full-coverage no``: while a node is down, the slots of
    the others keep working. A short ``cluster-node-timeout`` makes failures known quickly
    (and a replica take over from a primary that failed)."""

    def __init__(
        self, directory: Path, size: int = 3, node_timeout_ms: int = 1000, replicas: int = 0
    ) -> None:
        self.binary, self.cli = _binary("redis-server"), _binary("redis-cli")
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.ports = [free_port() for _ in range(size * (1 + replicas))]
        self.bus_ports = [free_port() for _ in self.ports]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A URL naming the first node: a cluster client finds the others by itself."""
        return f"redis://127.0.0.1:{self.ports[0]}"

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
            # A replica's first sync starts at once (not 5 s later, Redis' default).
            "--repl-diskless-sync-delay", "0",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        self.processes[port] = _spawn(command, directory / "redis.log")
        wait_for_port(port, 10.0, self.processes[port])

    def kill_node(self, port: int) -> None:
        stop(self.processes.pop(port, None), signal.SIGKILL)

    def pause_node(self, port: int) -> None:
        """Freezes a node (SIGSTOP): its connections stay open, nothing is read."""
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def resume_node(self, port: int) -> None:
        os.kill(self.processes[port].pid, signal.SIGCONT)

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
        replicas = ["--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.wait_until_ok()
        if self.replicas:
            self.wait_until_synced()

    def wait_until_synced(self, within: float = 30.0) -> None:
        """Waits until the cluster's view holds every running node, each primary with its
        replicas, and every replica has synced with its primary."""

        def synced() -> bool:
            roles = self.roles()
            if len(roles) < len(self.processes):
                return False
            for port, primary in roles.items():
                if primary is None:
                    replicas = sum(1 for of in roles.values() if of == port)
                    if replicas < self.replicas:
                        # A node's view learns of a replica by gossip, after the replica
                        # itself: a test would find its primary without an heir.
                        return False
                    online = _info(port)
                    count = sum("state=online" in v for k, v in online.items() if k[:5] == "slave")
                    if count < replicas:
                        return False
            return True

        _wait(synced, within, "every replica of the cluster to sync")

    def roles(self) -> dict[int, int | None]:
        """Each running node's port: ``None`` for a primary, else the port of its primary
        (as the first running node that answers sees the cluster)."""
        for port in self.processes:
            try:
                text = self._cli(port, "cluster", "nodes")
            except (subprocess.SubprocessError, OSError):
                continue
            by_id: dict[str, int] = {}
            rows = [line.split() for line in text.splitlines() if line.strip()]
            for row in rows:
                by_id[row[0]] = int(row[1].split("@")[0].rsplit(":", 1)[1])
            found: dict[int, int | None] = {}
            for row in rows:
                node_port, flags, master = by_id[row[0]], row[2].split(","), row[3]
                if node_port in self.processes and "fail" not in flags:
                    found[node_port] = None if "master" in flags else by_id.get(master)
            return found
        return {}

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill_node(port)
