"""What the benchmarks share: pinning to cores, CPU accounting, the servers they start (through
``harness``: each on a free port, stopped by its own pid) and the request files the load
generators cycle through."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from harness.processes import RedisServer, ServerProcess, Service, free_port
from presence.twilio.samples import SERVICE_SID, reachability
from presence.twilio.signing import form_headers

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

AUTH_TOKEN = "b3nchb3nchb3nchb3nchb3nchb3nch0"
API_TOKEN = "bench-api-token-0123456789"

CLK_TCK = os.sysconf("SC_CLK_TCK")
_SERVICES = itertools.count()

# Cores: the server under test alone on one core, everything else (load generator, Redis,
# this harness) on the other. Set by main() from --no-pin.
PIN = {"server": "1", "other": "0"}
PINNING = True


def log(message: str) -> None:
    """A line of the harness's progress, timed, on standard output."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def waited_seconds(pid: int) -> float:
    """Time the process's threads spent ready to run but waiting for a CPU (the run-queue
    delay of /proc/<pid>/task/*/schedstat): what other processes on its core took from it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class CpuMeter:
    """CPU time used by some running processes over an interval (utime + stime of
    /proc/<pid>/stat), as % of one core; after ``stop``, ``seconds`` holds the CPU seconds
    themselves, ``waited`` the seconds they waited for a CPU, and ``elapsed`` the interval."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.start_waited = {name: waited_seconds(pid) for name, pid in pids.items()}
        self.t0 = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self.elapsed = 0.0

    def stop(self) -> dict[str, float]:
        self.elapsed = time.monotonic() - self.t0
        self.seconds = {
            name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()
        }
        self.waited = {
            name: waited_seconds(pid) - self.start_waited[name] for name, pid in self.pids.items()
        }
        return {name: round(100 * used / self.elapsed, 1) for name, used in self.seconds.items()}


def redis_server(directory: Path) -> RedisServer:
    """A redis-server on the "other" core: no persistence, and no pub/sub output limit (a slow
    subscriber must not be cut off mid-measure)."""
    return RedisServer(
        directory,
        prefix=pinned("other", []),
        options=["--client-output-buffer-limit", "pubsub 0 0 0"],
    ).start()


def start_service(workdir: Path, redis_url: str, **extra: str) -> Service:
    """``presence serve`` alone on the server core."""
    settings = {
        "redis_url": redis_url,
        "twilio_auth_token": AUTH_TOKEN,
        "api_token": API_TOKEN,
        **extra,
    }
    log = workdir / f"service-{next(_SERVICES)}.log"
    service = Service(log, prefix=pinned("server", []), **settings)
    return service.start(within=30)


def start_reference(workdir: Path, script: str = "reference.py", *args: str) -> ServerProcess:
    """A reference app of ``bench/`` alone on the server core."""
    port = free_port()
    command = pinned("server", [PYTHON, str(ROOT / "bench" / script), "--port", str(port), *args])
    reference = ServerProcess(command, workdir / f"{script}-{port}.log", port=port)
    reference.start(within=30)
    return reference


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


def endpoint_id(rng: random.Random) -> str:
    """An endpoint id shaped like a UUID (36 characters)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
            params = reachability(
                f"{prefix}-{i:06d}", endpoints[i], k + 1, connected, connected=connected
            )
            yield (
                "POST",
                "/webhooks/sync",
                urlencode(params),
                [
                    f"{name}: {value}"
                    for name, value in form_headers(AUTH_TOKEN, url, params).items()
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


def loadavg() -> list[float]:
    """The load averages over 1, 5 and 15 minutes: how busy the machine was (2 cores shared)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


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
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "presence"], capture_output=True
        )
        info["commit"] = commit.stdout.decode().strip() + (
            " (presence/ modified)" if dirty.stdout else ""
        )
    info["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return info
