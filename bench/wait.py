"""Row 7: the cost of ``PRESENCE_REDIS_WAIT_REPLICAS=1`` on webhook ingest. The same signed
webhooks, at full speed, against ``presence serve`` on a master with one replica (both on
the "other" core, as the Redis of the other rows), first with WAIT 0, then with WAIT 1, in
one run: the ratio is what waiting for a replica costs, everything else equal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import loads
from bench.http_rows import counted_wrk, settle
from bench.support import log, pinned, redis_server, start_service, webhook_requests
from harness.processes import RedisServer, redis_cli


def _replica_online(master: RedisServer) -> bool:
    return "state=online" in redis_cli(master.port, "info", "replication")


def replicated_redis(workdir: Path) -> tuple[RedisServer, RedisServer]:
    """A master and one replica of it, synced."""
    master = redis_server(workdir / "wait-master")
    replica = RedisServer(
        workdir / "wait-replica",
        prefix=pinned("other", []),
        options=["--replicaof", "127.0.0.1", str(master.port)],
    ).start()
    deadline = time.monotonic() + 30
    while not _replica_online(master):
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync with the master")
        time.sleep(0.1)
    return master, replica


def run(workdir: Path, cfg: Any) -> dict[str, Any]:
    d, c = cfg.duration, cfg.connections
    master, replica = replicated_redis(workdir)
    result: dict[str, Any] = {}
    try:
        for replicas in (0, 1):
            label = f"wait_{replicas}"
            service = start_service(workdir, master.url, redis_wait_replicas=str(replicas))
            try:
                warm = webhook_requests(workdir / f"{label}-warm.tsv", service.port, 20_000, "w")
                log(f"wait: WAIT {replicas}, warm-up {cfg.warmup}s")
                calibration = loads.wrk(service, warm, cfg.warmup, c)
                count = max(20_000, int(calibration["rps"] * d * 2) + 5000)
                requests = webhook_requests(workdir / f"{label}.tsv", service.port, count, label)
                settle(service)
                log(f"wait: WAIT {replicas}, {d}s")
                result[label] = counted_wrk(service, requests, d, c, master)
            finally:
                service.stop()
    finally:
        replica.stop()
        master.stop()
    result["ratio"] = round(result["wait_1"]["rps"] / result["wait_0"]["rps"], 3)
    return result
