"""Runs a load generator against one server: wrk (closed loop, cycling through a request file)
or the Python pacer (open loop at a fixed rate, or closed loop when wrk is missing), with the
CPU each process used and what Redis executed meanwhile."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.support import PYTHON, ROOT, CpuMeter, RequestFile, pinned
from harness.processes import RedisServer, ServerProcess


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def commandstats(redis: RedisServer) -> dict[str, tuple[int, int]]:
    with Redis(port=redis.port) as client:
        stats = client.info("commandstats")
    return {name[8:]: (v["calls"], v["usec"]) for name, v in stats.items()}


def commandstats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0:
            out[name] = {
                "calls": calls - c0,
                "usec": usec - u0,
                "usec_per_call": round((usec - u0) / (calls - c0), 2),
            }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["usec"]))


def _measure(
    command: list[str],
    server: ServerProcess,
    redis: RedisServer | None,
    timeout: float,
    marker: str,
) -> dict[str, Any]:
    pids = {"server": server.pid}
    if redis is not None:
        pids["redis"] = redis.pid
        stats0 = commandstats(redis)
    meter = CpuMeter(**pids)
    cpu0, t0 = _children_cpu(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - t0
    cpu = meter.stop()
    cpu["generator"] = round(100 * (_children_cpu() - cpu0) / elapsed, 1)
    lines = [line for line in done.stdout.splitlines() if line.startswith(marker)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{command[:4]}... failed ({done.returncode}): "
            f"{done.stdout[-2000:]} {done.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(marker) :])
    result["cpu_percent_of_one_core"] = cpu
    result["cpu_seconds"] = {name: round(used, 3) for name, used in meter.seconds.items()}
    # A server below 100% of its core either had nothing to do or was kept from its core by
    # other processes (the machine is shared): the time it waited for a CPU tells which.
    result["waited_for_cpu_percent"] = {
        name: round(100 * waited / elapsed, 1) for name, waited in meter.waited.items()
    }
    if redis is not None:
        result["redis_commands"] = commandstats_delta(stats0, commandstats(redis))
    return result


def wrk(
    server: ServerProcess,
    requests: RequestFile,
    duration: float,
    connections: int,
    redis: RedisServer | None = None,
) -> dict[str, Any]:
    """Closed loop at full speed with wrk (the Python pacer when wrk is missing)."""
    if not have_wrk():
        return pacer(server, requests, duration, connections, rate=0, redis=redis)
    command = pinned(
        "other",
        [
            "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
            "-s", str(ROOT / "bench" / "cycle.lua"), server.url, "--", str(requests.path), "1",
        ],
    )  # fmt: skip
    raw = _measure(command, server, redis, duration + 120, "WRKJSON ")
    seconds = raw["duration_us"] / 1e6
    errors = {k[4:]: raw[k] for k in raw if k.startswith("err_") and raw[k]}
    return {
        "generator": "wrk",
        "connections": connections,
        "duration_s": round(seconds, 2),
        "requests": int(raw["requests"]),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "distinct_requests": int(raw["distinct"]),
        "sent": int(raw["sent"]),
        "wrapped": raw["sent"] > raw["distinct"],
        "cpu_percent_of_one_core": raw["cpu_percent_of_one_core"],
        "cpu_seconds": raw["cpu_seconds"],
        "waited_for_cpu_percent": raw["waited_for_cpu_percent"],
        "server_cpu_us_per_request": _per_request(raw["cpu_seconds"], raw["requests"]),
        "redis_commands": raw.get("redis_commands"),
    }


def pacer(
    server: ServerProcess,
    requests: RequestFile,
    duration: float,
    connections: int,
    *,
    rate: float,
    count: int = 0,
    redis: RedisServer | None = None,
) -> dict[str, Any]:
    """The Python generator: open loop at ``rate`` requests/s, or closed loop (rate 0)."""
    command = pinned(
        "other",
        [
            PYTHON, "-m", "bench.pacer", str(requests.path), "--port", str(server.port),
            "--duration", f"{duration:g}", "--connections", str(connections),
            "--rate", f"{rate:g}", "--count", str(count),
        ],
    )  # fmt: skip
    raw = _measure(command, server, redis, duration + 120, "PACERJSON ")
    statuses = {int(k): v for k, v in raw.pop("statuses").items()}
    bad = sum(v for k, v in statuses.items() if k >= 400)
    raw.update(
        generator="python-pacer",
        connections=connections,
        rps=raw["achieved_rate"],
        errors={"status": bad, "io": raw.pop("errors")} if bad or raw["errors"] else {},
        statuses=statuses,
        distinct_requests=raw.pop("distinct"),
    )
    raw["wrapped"] = raw["requests"] > raw["distinct_requests"]
    raw["server_cpu_us_per_request"] = _per_request(raw["cpu_seconds"], raw["requests"])
    return raw


def _per_request(seconds: dict[str, float], requests: float) -> float | None:
    """The server's CPU per request answered: its utime + stime over the run (the run's few
    idle milliseconds at start and end cost it nothing) divided by the requests. What does
    not depend on how much of its core the server got."""
    return round(seconds["server"] / requests * 1e6, 1) if requests else None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
