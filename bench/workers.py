"""Row "workers": what a second worker process (``PRESENCE_WORKERS=2``) buys on this machine.
Webhook ingest as row 1 (wrk, distinct signed webhooks), against ``presence serve`` with one
worker and then with two, each on a fresh redis-server: throughput, and the CPU per webhook
of all the service's processes (the supervisor and its workers). Neither service is pinned to
a core (two workers need both), so wrk and Redis, on the first core, share it with them: the
figures say what this two-core machine gives, not what a bigger one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import loads
from bench.support import AUTH_TOKEN, CpuMeter, log, redis_server, webhook_requests
from harness.processes import Service


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (its workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _one(workdir: Path, cfg: Any, workers: int) -> dict[str, Any]:
    redis = redis_server(workdir / f"redis-workers-{workers}")
    service = Service(
        workdir / f"service-workers-{workers}.log",
        redis_url=redis.url,
        twilio_auth_token=AUTH_TOKEN,
        workers=str(workers),
    ).start(within=30)
    try:
        d, c = cfg.duration, cfg.connections
        warm = webhook_requests(workdir / f"workers-warm-{workers}.tsv", service.port, 20_000, "w")
        calibration = loads.wrk(service, warm, cfg.warmup, c)
        count = max(20_000, int(calibration["rps"] * d * 2) + 5000)
        main = webhook_requests(workdir / f"workers-{workers}.tsv", service.port, count, "m")
        pids = {"supervisor": service.pid}
        pids |= {f"worker-{n}": pid for n, pid in enumerate(children(service.pid))}
        if len(pids) != workers + (workers > 1):
            raise RuntimeError(f"expected {workers} worker(s), found processes {pids}")
        log(f"workers: {workers} worker(s), {d}s")
        meter = CpuMeter(**pids)
        run = loads.wrk(service, main, d, c, redis)
        meter.stop()
        used = sum(meter.seconds.values())
        return {
            "workers": workers,
            "rps": run["rps"],
            "requests": run["requests"],
            "wrapped": run["wrapped"],
            "errors": run["errors"],
            "p50_ms": run["p50_ms"],
            "p99_ms": run["p99_ms"],
            "service_cpu_us_per_webhook": round(used / run["requests"] * 1e6, 1),
            "service_cpu_percent_of_one_core": round(100 * used / meter.elapsed, 1),
            "redis_cpu_percent_of_one_core": run["cpu_percent_of_one_core"].get("redis"),
        }
    finally:
        service.stop()
        redis.stop()


def run(workdir: Path, cfg: Any) -> dict[str, Any]:
    one = _one(workdir, cfg, 1)
    two = _one(workdir, cfg, 2)
    return {"one": one, "two": two, "ratio": round(two["rps"] / one["rps"], 3)}
