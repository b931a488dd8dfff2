"""``python -m bench``: runs the benchmarks, prints a Markdown table, writes JSON results.

See docs/benchmarks.md for what each row measures and how to read it."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import deadlines, feed, http_rows, loads, memory, support, wait
from bench.profile import Profiler
from bench.support import ROOT, affinity, cores
from harness.processes import stop_all

ROWS = ("ingest", "get", "lookup", "memory", "deadlines", "feed", "wait")

TARGETS = {
    "ingest": 0.7,  # x the bare reference's req/s
    "get": 0.7,  # x the bare JSON GET's req/s
    "half_rate_p99_ms": 20.0,
    "bytes_per_identity": 200.0,
    "deadlines_s": 5.0,
    "feed_p99_ms": 100.0,
    "feed_bytes_per_idle_stream": 50 * 1024,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s runs, no 1M memory row (~2 min)")
    parser.add_argument(
        "--only", action="append", choices=ROWS, help="run only this row (repeatable)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measured HTTP run (15; 5 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up per server (3; 2 with --quick)"
    )
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (64)")
    parser.add_argument(
        "--deadlines", type=int, default=100_000, help="identities in the deadline row"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also sample the service with py-spy (extra runs)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, request files)"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.warmup = args.warmup or (2.0 if args.quick else 3.0)
    args.rows = set(args.only or ROWS)
    args.memory_sizes = [100_000] if args.quick else [100_000, 1_000_000]
    return args


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    support.PINNING = not cfg.no_pin and shutil.which("taskset") is not None and os.cpu_count() == 2
    if not cfg.no_pin and os.cpu_count() != 2:
        # Pin the server alone on the last core, everything else on the others.
        last = (os.cpu_count() or 1) - 1
        support.PINNING = last > 0 and shutil.which("taskset") is not None
        support.PIN.update(server=str(last), other=f"0-{last - 1}" if last > 1 else "0")
    cfg.workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    results: dict[str, Any] = {
        "machine": support.machine(),
        "config": {
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "connections": cfg.connections,
            "generator": "wrk" if loads.have_wrk() else "python-pacer (wrk missing)",
            "pinning": (
                f"server on core {support.PIN['server']}; load generator, Redis and harness "
                f"on core {support.PIN['other']}"
                if support.PINNING
                else "none"
            ),
            "rows": sorted(cfg.rows),
            "quick": cfg.quick,
        },
        "targets": TARGETS,
    }
    other, server_core = cores("other"), cores("server")
    try:
        with affinity(other):
            if cfg.rows & {"ingest", "get", "lookup"}:
                http_rows.run(cfg.workdir, cfg, cfg.rows, results)
        if "memory" in cfg.rows:
            # Nothing else runs now: the filler gets the core the servers had.
            with affinity(server_core):
                results["memory"] = memory.run(cfg.workdir, cfg.memory_sizes)
        if "deadlines" in cfg.rows:
            with affinity(other):
                results["deadlines"] = deadlines.run(
                    cfg.workdir,
                    cfg.deadlines,
                    Profiler(cfg) if cfg.profile else None,
                    fill_cores=server_core,
                )
        if "feed" in cfg.rows:
            with affinity(other):
                results["feed"] = feed.run(cfg.workdir, cfg.duration)
        if "wait" in cfg.rows:
            with affinity(other):
                results["wait"] = wait.run(cfg.workdir, cfg)
    finally:
        stop_all()
        results["elapsed_s"] = round(time.time() - started, 1)
        loads.write_json(cfg.json, results)
        if not cfg.keep:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    from bench.report import render

    print()
    print(render(results))
    print(f"\nJSON: {cfg.json}  ({results['elapsed_s']} s)")


if __name__ == "__main__":
    main()
