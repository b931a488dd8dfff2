"""Rows 1 and 2 (targets 1 and 2 of issue "Lean"): webhook ingest, single-identity GET and
1000-name lookup, each against the service (``presence serve`` on its own redis-server) and
the bare reference, in one run."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import loads
from bench.listeners import STREAMS
from bench.profile import Profiler
from bench.push import ADMIN_TOKEN
from bench.support import (
    AUTH_TOKEN,
    PYTHON,
    ROOT,
    RequestFile,
    http_json,
    identity_get_requests,
    log,
    lookup_requests,
    metric_sum,
    metrics_text,
    pinned,
    redis_server,
    start_reference,
    start_service,
    webhook_requests,
)
from harness.processes import RedisServer, ServerProcess
from presence.twilio.samples import SERVICE_SID

SEED_IDENTITIES = 5000
LOOKUP_CONNECTIONS = 16


def settle(service: ServerProcess, within: float = 30.0) -> dict[str, Any]:
    """Waits until no identity is pending offline (the sweeper has caught up)."""
    deadline = time.monotonic() + within
    while True:
        stats: dict[str, Any] = http_json(f"{service.url}/v1/services/{SERVICE_SID}/stats")
        if stats["pending_offline"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def applied(service: ServerProcess) -> float:
    return metric_sum(metrics_text(service.url), "presence_webhooks_total", outcome="applied")


def outcomes(service: ServerProcess) -> dict[str, float]:
    text = metrics_text(service.url)
    return {
        o: metric_sum(text, "presence_webhooks_total", outcome=o)
        for o in ("applied", "duplicate", "stale", "ignored", "rejected")
    }


def counted_wrk(
    service: ServerProcess,
    requests: RequestFile,
    duration: float,
    connections: int,
    redis: RedisServer,
) -> dict[str, Any]:
    """``loads.wrk`` against the service, with what its webhooks came to (applied,
    duplicate...: from its metrics, before and after) as the result's ``outcomes``."""
    before = outcomes(service)
    result = loads.wrk(service, requests, duration, connections, redis)
    after = outcomes(service)
    result["outcomes"] = {k: int(after[k] - before[k]) for k in after}
    return result


def run(workdir: Path, cfg: Any, wanted: set[str], results: dict[str, Any]) -> None:
    redis = redis_server(workdir / "redis-http")
    # The admin token and private receivers: the ingest row also runs with a push
    # subscription open (bench/listeners.py).
    service = start_service(
        workdir,
        redis.url,
        admin_token=ADMIN_TOKEN,
        push_allow_private="true",
        max_streams=str(2 * STREAMS),
    )
    reference = start_reference(workdir)
    d, c = cfg.duration, cfg.connections
    try:
        if "ingest" in wanted:
            results["ingest"] = ingest(workdir, cfg, redis, service, reference)
        if wanted & {"get", "lookup"}:
            names = seed(workdir, service)
            log("settling (waiting for the sweeper to fire pending deadlines)")
            settle(service)
        if "get" in wanted:
            gets = identity_get_requests(workdir / "get.tsv", names)
            log("GET: warm-up")
            loads.wrk(reference, gets, cfg.warmup, c)
            loads.wrk(service, gets, cfg.warmup, c)
            log(f"GET: reference {d}s")
            ref = loads.wrk(reference, gets, d, c)
            log(f"GET: presence {d}s")
            svc = loads.wrk(service, gets, d, c, redis)
            results["get"] = {
                "presence": svc,
                "reference": ref,
                "ratio": round(svc["rps"] / ref["rps"], 3),
            }
            if cfg.profile:
                results["get"]["profile"] = Profiler(cfg).during(
                    service, lambda: loads.wrk(service, gets, d, c, redis), d
                )
        if "lookup" in wanted:
            bodies = lookup_requests(workdir / "lookup.tsv", names)
            # Each request is 1000 names: 16 at once is already 16,000 identities in flight.
            lc = min(c, LOOKUP_CONNECTIONS)
            log("lookup: warm-up")
            loads.wrk(service, bodies, cfg.warmup, lc)
            ref = results.get("get", {}).get("reference")
            if ref is None:
                gets = identity_get_requests(workdir / "get.tsv", names)
                log(f"lookup: reference GET {d}s")
                ref = loads.wrk(reference, gets, d, c)
            log(f"lookup: presence {d}s")
            svc = loads.wrk(service, bodies, d, lc, redis)
            svc["identities_per_s"] = round(svc["rps"] * 1000, 0)
            results["lookup"] = {
                "presence": svc,
                "reference_get": ref,
                "ratio": round(svc["rps"] / ref["rps"], 4),
            }
            if cfg.profile:
                results["lookup"]["profile"] = Profiler(cfg).during(
                    service, lambda: loads.wrk(service, bodies, d, lc, redis), d
                )
    finally:
        service.stop()
        reference.stop()
        redis.stop()


def ingest(
    workdir: Path, cfg: Any, redis: RedisServer, service: ServerProcess, reference: ServerProcess
) -> dict[str, Any]:
    d, c = cfg.duration, cfg.connections
    log("ingest: signing warm-up webhooks")
    warm = webhook_requests(workdir / "warm.tsv", service.port, 20_000, "warm")
    log(f"ingest: warm-up {cfg.warmup}s each")
    loads.wrk(reference, warm, cfg.warmup, c)
    calibration = loads.wrk(service, warm, cfg.warmup, c)
    # Enough distinct webhooks that the measured run never repeats one (checked below).
    count = max(20_000, int(calibration["rps"] * d * 2) + 5000)
    log(f"ingest: signing {count} distinct webhooks (calibration {calibration['rps']:.0f} req/s)")
    main = webhook_requests(workdir / "ingest.tsv", service.port, count, "user")
    log(f"ingest: reference {d}s")
    ref = loads.wrk(reference, main, d, c)
    work = start_reference(
        workdir, "reference_work.py", "--redis-url", redis.url, "--token", AUTH_TOKEN
    )
    try:
        work_file = webhook_requests(workdir / "work.tsv", work.port, count, "work")
        loads.wrk(work, work_file, cfg.warmup, c)
        log(f"ingest: minimal real-work reference {d}s")
        work_run = loads.wrk(work, work_file, d, c, redis)
    finally:
        work.stop()
    settle(service)
    log(f"ingest: presence {d}s")
    svc = counted_wrk(service, main, d, c, redis)
    result: dict[str, Any] = {
        "presence": svc,
        "reference": ref,
        "ratio": round(svc["rps"] / ref["rps"], 3),
        "work_reference": work_run,
        "work_ratio": round(work_run["rps"] / ref["rps"], 3),
    }

    # The harness shape issue "Lean" named too: 32 connections, each server.
    main32 = webhook_requests(workdir / "ingest32.tsv", service.port, count, "conn32")
    log(f"ingest: reference, 32 connections, {d}s")
    ref32 = loads.wrk(reference, main32, d, 32)
    settle(service)
    log(f"ingest: presence, 32 connections, {d}s")
    svc32 = counted_wrk(service, main32, d, 32, redis)
    result["connections_32"] = {
        "presence": svc32,
        "reference": ref32,
        "ratio": round(svc32["rps"] / ref32["rps"], 3),
    }

    # Latency at half the peak rate, open loop (the Python pacer: wrk has no fixed rate).
    half = svc["rps"] / 2
    log(f"ingest: presence at half its peak, {half:.0f} req/s for {d}s (Python pacer)")
    paced_file = webhook_requests(workdir / "half.tsv", service.port, int(half * d) + 1000, "half")
    settle(service)
    applied_before = applied(service)
    paced = loads.pacer(service, paced_file, d, c, rate=half, redis=redis)
    paced["applied"] = int(applied(service) - applied_before)
    result["presence_half_rate"] = paced
    ref_half = ref["rps"] / 2
    log(f"ingest: reference at half its peak, {ref_half:.0f} req/s for {d}s (Python pacer)")
    result["reference_half_rate"] = loads.pacer(reference, main, d, c, rate=ref_half)
    if cfg.profile:
        settle(service)
        prof_file = webhook_requests(workdir / "profile.tsv", service.port, count, "prof")
        result["profile"] = Profiler(cfg).during(
            service, lambda: loads.wrk(service, prof_file, d, c, redis), d
        )
    # Last: what 1,000 streams and a push subscription leave behind (a sender catching up,
    # streams closing) must not weigh on the rows before.
    result["busy"] = busy(workdir, cfg, redis, service, count)
    result["busy"]["ratio"] = round(result["busy"]["presence"]["rps"] / ref["rps"], 3)
    return result


def busy(
    workdir: Path, cfg: Any, redis: RedisServer, service: ServerProcess, count: int
) -> dict[str, Any]:
    """Ingest as above, with 1,000 change-feed streams and one push subscription open on the
    service (bench/listeners.py, on the other core)."""
    file = webhook_requests(workdir / "busy.tsv", service.port, count, "busy")
    listeners = subprocess.Popen(
        pinned("other", [PYTHON, "-m", "bench.listeners", service.url, "busy"]),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listeners.stdout is not None
        assert listeners.stdin is not None
        if listeners.stdout.readline().strip() != "LISTENING":
            raise RuntimeError("bench/listeners.py did not start")
        settle(service)
        log(
            f"ingest: presence with {STREAMS} streams and a push subscription open, {cfg.duration}s"
        )
        run = counted_wrk(service, file, cfg.duration, cfg.connections, redis)
        profile = None
        if cfg.profile:
            # Where a busy service's time goes: webhooks, streams or the push subscription.
            settle(service)
            again = webhook_requests(workdir / "busy-profile.tsv", service.port, count, "busyp")
            profile = Profiler(cfg).during(
                service,
                lambda: loads.wrk(service, again, cfg.duration, cfg.connections),
                cfg.duration,
            )
        # communicate() closes its standard input, the listeners' sign to report.
        out, _ = listeners.communicate(timeout=60)
    finally:
        if listeners.poll() is None:
            listeners.kill()
            listeners.wait()
    lines = [line for line in out.splitlines() if line.startswith("LISTENERSJSON ")]
    if not lines:
        raise RuntimeError(f"bench/listeners.py reported nothing: {out[-2000:]}")
    result = {"presence": run, "listeners": json.loads(lines[-1][len("LISTENERSJSON ") :])}
    if profile is not None:
        result["profile"] = profile
    return result


def seed(workdir: Path, service: ServerProcess) -> list[str]:
    """Puts SEED_IDENTITIES identities online (one endpoint each) through signed webhooks."""
    log(f"seeding {SEED_IDENTITIES} identities through webhooks")
    file = webhook_requests(
        workdir / "seed.tsv", service.port, SEED_IDENTITIES, "seed", connects_only=True
    )
    result = loads.pacer(service, file, 600, 32, rate=0, count=SEED_IDENTITIES)
    if result["requests"] != SEED_IDENTITIES or result["errors"]:
        raise RuntimeError(f"seeding failed: {result}")
    names = [f"seed-{i:06d}" for i in range(SEED_IDENTITIES)]
    random.Random(3).shuffle(names)
    return names
