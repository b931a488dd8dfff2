"""Processes the benchmarks start (redis-server, ``presence serve``, the reference app, load
generators), each on a free port and stopped by its own pid; CPU accounting; the Twilio
signer; the request files the load generators cycle through."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "IS" + "fedcba9876543210" * 2
AUTH_TOKEN = "b3nchb3nchb3nchb3nchb3nchb3nch0"
API_TOKEN = "bench-api-token-0123456789"

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Cores: the server under test alone on one core, everything else (load generator, Redis,
# this harness) on the other. Set by main() from --no-pin.
PIN = {"server": "1", "other": "0"}
PINNING = True


def pinned(role: str, command: Sequence[str]) -> list[str]:
    if not PINNING or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", PIN[role], *command]


def cores(role: str) -> set[int]:
    """The cores of a role, as a set (``0``, ``0-2``)."""
    first, _, last = PIN[role].partition("-")
    return set(range(int(first), int(last or first) + 1))


@contextlib.contextmanager
def affinity(cpus: set[int]) -> Iterator[None]:
    """Runs this process (and what it starts meanwhile) on ``cpus`` when pinning."""
    if not PINNING:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, within: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


# --- processes -----------------------------------------------------------------------------

_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def start(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
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
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, within: float = 15
) -> None:
    """Stops one process we started, by its pid (SIGKILL when it outlives ``within``)."""
    if process is None:
        return
    _RUNNING.pop(process.pid, None)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def stop_all() -> None:
    for process in list(_RUNNING.values()):
        stop(process, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU time used by some running processes over an interval, as % of one core."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        return {
            name: round(100 * (cpu_seconds(pid) - self.start[name]) / elapsed, 1)
            for name, pid in self.pids.items()
        }


class RedisServer:
    """A redis-server of the benchmark's own: free port, private directory, no persistence,
    no pub/sub output limit (a slow subscriber must not be cut off mid-measure)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run bench/run, which installs it")
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0",
        ]  # fmt: skip
        self.process = start(pinned("other", command), self.directory / "redis.log")
        wait_for_port(self.port, 10, self.process)
        return self

    def stop(self) -> None:
        stop(self.process)
        self.process = None


def service_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update({f"PRESENCE_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class HttpServer:
    """``presence serve`` or the reference app, on a free port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop(self.process)


def start_service(workdir: Path, redis_url: str, **extra: str) -> HttpServer:
    port = free_port()
    settings = {
        "port": str(port),
        "redis_url": redis_url,
        "twilio_auth_token": AUTH_TOKEN,
        "api_token": API_TOKEN,
        **extra,
    }
    log = workdir / f"service-{port}.log"
    process = start(
        pinned("server", [PYTHON, "-m", "presence", "serve"]), log, service_env(**settings)
    )
    wait_for_port(port, 30, process)
    return HttpServer("presence", process, port, log)


def start_reference(workdir: Path) -> HttpServer:
    port = free_port()
    log = workdir / f"reference-{port}.log"
    process = start(
        pinned("server", [PYTHON, str(ROOT / "bench" / "reference.py"), "--port", str(port)]),
        log,
    )
    wait_for_port(port, 30, process)
    return HttpServer("reference", process, port, log)


def http_json(url: str, token: str | None = API_TOKEN) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def metrics_text(base_url: str) -> str:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# --- Twilio signatures and request files ---------------------------------------------------


def twilio_signature(token: str, url: str, params: Mapping[str, str]) -> str:
    """X-Twilio-Signature of a form webhook: base64(HMAC-SHA1(token, url + the parameters
    sorted by name, each name followed by its value))."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def endpoint_id(rng: random.Random) -> str:
    """An endpoint id shaped like a UUID (36 characters)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def reachability_params(
    identity: str, endpoint: str, event_id: int, connected: bool
) -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "ServiceSid": SERVICE_SID,
        "EventType": "endpoint_connected" if connected else "endpoint_disconnected",
        "Identity": identity,
        "EndpointId": endpoint,
        "EventId": str(event_id),
        "IsIdentityOnline": "true" if connected else "false",
    }


@dataclass
class RequestFile:
    """Requests, one a line: METHOD <tab> PATH <tab> BODY <tab> Header: value ..."""

    path: Path
    count: int
    extra: dict[str, Any] = field(default_factory=dict)


def write_requests(path: Path, lines: Iterable[tuple[str, str, str, Sequence[str]]]) -> RequestFile:
    count = 0
    with path.open("w") as f:
        for method, target, body, headers in lines:
            assert "\t" not in body
            assert "\n" not in body
            f.write("\t".join([method, target, body, *headers]) + "\n")
            count += 1
    return RequestFile(path, count)


def webhook_requests(
    path: Path,
    port: int,
    count: int,
    prefix: str,
    *,
    identities: int = 50_000,
    connects_only: bool = False,
) -> RequestFile:
    """``count`` distinct signed webhooks for ``http://127.0.0.1:<port>/webhooks/sync``: rounds
    over ``identities`` identities named ``<prefix>-NNNNNN``, each round's EventIds above the
    last, connects and disconnects alternating (one endpoint per identity), so every one is
    really applied."""
    url = f"http://127.0.0.1:{port}/webhooks/sync"
    rng = random.Random(prefix)
    identities = min(identities, count)
    endpoints = [endpoint_id(rng) for _ in range(identities)]

    def lines() -> Iterable[tuple[str, str, str, Sequence[str]]]:
        for k in range(count):
            rnd, i = divmod(k, identities)
            connected = connects_only or rnd % 2 == 0
            params = reachability_params(f"{prefix}-{i:06d}", endpoints[i], k + 1, connected)
            yield (
                "POST",
                "/webhooks/sync",
                urlencode(params),
                [
                    "Content-Type: application/x-www-form-urlencoded",
                    "X-Twilio-Signature: " + twilio_signature(AUTH_TOKEN, url, params),
                ],
            )

    return write_requests(path, lines())


def identity_get_requests(path: Path, names: Sequence[str]) -> RequestFile:
    base = f"/v1/services/{SERVICE_SID}/identities/"
    auth = f"Authorization: Bearer {API_TOKEN}"
    return write_requests(path, (("GET", base + name, "", [auth]) for name in names))


def lookup_requests(
    path: Path, names: Sequence[str], per_body: int = 1000, bodies: int = 8
) -> RequestFile:
    rng = random.Random(7)
    target = f"/v1/services/{SERVICE_SID}/lookup"
    headers = ["Content-Type: application/json", f"Authorization: Bearer {API_TOKEN}"]

    def lines() -> Iterable[tuple[str, str, str, Sequence[str]]]:
        for _ in range(bodies):
            chosen = rng.sample(list(names), min(per_body, len(names)))
            yield "POST", target, json.dumps({"identities": chosen}), headers

    return write_requests(path, lines())


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    with contextlib.suppress(Exception), open("/proc/meminfo") as f:
        info["MemTotal"] = f.readline().split(":")[1].strip()
    with contextlib.suppress(Exception):
        info["Python"] = sys.version.split()[0]
        import aiohttp
        import redis

        info["aiohttp"] = aiohttp.__version__
        info["redis-py"] = redis.__version__
    with contextlib.suppress(Exception):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        info["redis-server"] = out.split("v=")[1].split()[0]
    with contextlib.suppress(Exception):
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        info["wrk"] = (wrk.stdout + wrk.stderr).split()[1]
    with contextlib.suppress(Exception):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    info["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return info
