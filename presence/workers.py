"""``presence serve --workers N``: N worker processes on one port, and their supervisor.

Each worker is a whole ``presence serve`` (its own event loop, sweeper and Redis
connections) listening on the same port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them. They share nothing but Redis, exactly like replicas on separate hosts,
and their metrics, through ``PROMETHEUS_MULTIPROC_DIR``. The supervisor holds the port, starts
the workers, starts another when one dies, and on SIGTERM or SIGINT passes the signal on and
waits for each to finish its requests.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from presence.metrics import MULTIPROCESS_DIR_VARIABLE
from presence.serve import StartupError
from presence.settings import Settings, env_name

log = logging.getLogger("presence.workers")

WORKER_VARIABLE = "PRESENCE_INTERNAL_WORKER"
"""Set in a worker's environment: it shares its port with its siblings."""

POLL_SECONDS = 0.1
RESTART_PAUSE_SECONDS = 1.0
EXIT_MARGIN_SECONDS = 10.0
"""Beyond the shutdown timeout, how long a worker may take to close Redis and exit."""


def is_worker() -> bool:
    return os.environ.get(WORKER_VARIABLE) == "1"


def _environment(settings: Settings, port: int, metrics_directory: str) -> dict[str, str]:
    """This process's environment with every setting spelled out, so that a worker runs with
    exactly the supervisor's settings, command-line flags included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    for field, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name(field)] = str(value)
    env[env_name("port")] = str(port)
    env[env_name("workers")] = "1"
    env[WORKER_VARIABLE] = "1"
    env[MULTIPROCESS_DIR_VARIABLE] = metrics_directory
    return env


def _reserve(host: str, port: int) -> socket.socket:
    """Binds (without listening) the address the workers will share: the port is checked
    once, a port of 0 is chosen once, and it stays held while workers come and go."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise StartupError(
            f"cannot listen on {host}:{port} (PRESENCE_HOST, PRESENCE_PORT): {error}"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} (PRESENCE_HOST, PRESENCE_PORT): "
            f"{error.strerror or error}"
        ) from None
    return sock


class Supervisor:
    """Runs ``settings.workers`` workers until SIGTERM or SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = False

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "presence", "serve"], env=env, stdin=subprocess.DEVNULL
        )
        log.info("started worker pid %d", process.pid)
        return process

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Returns the exit status: 0 after a clean stop, 2 when the workers cannot start."""
        settings = self.settings
        held = _reserve(settings.host, settings.port)
        port: int = held.getsockname()[1]
        metrics_directory = tempfile.mkdtemp(prefix="presence-metrics-")
        env = _environment(settings, port, metrics_directory)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("supervising %d workers on %s:%d", settings.workers, settings.host, port)
        workers = [self._spawn(env) for _ in range(settings.workers)]
        started = [time.monotonic()] * len(workers)
        status = 0
        try:
            while not self.stopping:
                time.sleep(POLL_SECONDS)
                for slot, worker in enumerate(workers):
                    code = worker.poll()
                    if code is None:
                        continue
                    mark_process_dead(worker.pid, metrics_directory)  # type: ignore[no-untyped-call]
                    if code == 2:
                        # A setting or the address is wrong: another worker would fail alike.
                        log.error("worker pid %d could not start; stopping", worker.pid)
                        self.stopping, status = True, 2
                        break
                    if time.monotonic() - started[slot] < RESTART_PAUSE_SECONDS:
                        continue  # a worker that dies at once is restarted at most each second
                    log.error("worker pid %d exited with %d; starting another", worker.pid, code)
                    workers[slot] = self._spawn(env)
                    started[slot] = time.monotonic()
        finally:
            self._stop_all(workers)
            held.close()
            shutil.rmtree(metrics_directory, ignore_errors=True)
        log.info("all workers stopped")
        return status

    def _stop_all(self, workers: list[subprocess.Popen[bytes]]) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds + EXIT_MARGIN_SECONDS
        for worker in workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killed", worker.pid)
                worker.kill()
                worker.wait()
