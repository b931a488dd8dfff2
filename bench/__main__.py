"""``python -m bench``: runs the benchmarks, prints a Markdown table, writes JSON results.

See docs/benchmarks.md for what each row measures and how to read it."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import (
    client,
    cost,
    deadlines,
    feed,
    http_rows,
    instructions,
    loads,
    memory,
    plot,
    push,
    redis_time,
    support,
    wait,
    workers,
)
from bench.profile import Profiler
from bench.support import ROOT, affinity, cores
from bench.targets import TARGETS
from harness.processes import stop_all

ROWS = (
    "ingest",
    "get",
    "lookup",
    "redis",
    "memory",
    "deadlines",
    "feed",
    "push",
    "cost",
    "wait",
    "workers",
    "client",
    "instructions",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="5 s runs, no 1M memory or cost points (~4 min)"
    )
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
        "--plot", type=Path, default=plot.DEFAULT_OUT, help="the cost row's PNG (docs/cost.png)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, request files)"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.warmup = args.warmup or (2.0 if args.quick else 3.0)
    args.rows = set(args.only or ROWS)
    # The push row's receiver is down this long (the five minutes; one with --quick).
    args.push_outage = 60.0 if args.quick else 300.0
    args.memory_sizes = [100_000] if args.quick else [100_000, 1_000_000]
    args.cost_sizes = [n for n in cost.SIZES if not args.quick or n < 1_000_000]
    return args


def pin(cfg: argparse.Namespace) -> None:
    """Where the processes run: the server alone on the last core, everything else on the
    others (none with --no-pin, or without taskset)."""
    support.PINNING = not cfg.no_pin and shutil.which("taskset") is not None and os.cpu_count() == 2
    if not cfg.no_pin and os.cpu_count() != 2:
        last = (os.cpu_count() or 1) - 1
        support.PINNING = last > 0 and shutil.which("taskset") is not None
        support.PIN.update(server=str(last), other=f"0-{last - 1}" if last > 1 else "0")


def run_config(cfg: argparse.Namespace) -> dict[str, Any]:
    """How the run is made, as the results record it."""
    return {
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
    }


def _measure(
    cfg: argparse.Namespace,
    results: dict[str, Any],
    row: Callable[[str], contextlib.AbstractContextManager[None]],
) -> None:
    """Runs each row asked for, in order, into ``results``."""
    other, server_core = cores("other"), cores("server")
    if cfg.rows & {"ingest", "get", "lookup"}:
        with row("http"), affinity(other):
            http_rows.run(cfg.workdir, cfg, cfg.rows, results)
    if "redis" in cfg.rows:
        # The harness and Redis take turns: both on the core the servers had.
        with row("redis"), affinity(server_core):
            results["redis"] = redis_time.run(cfg.workdir)
    if "memory" in cfg.rows:
        # Nothing else runs now: the filler gets the core the servers had.
        with row("memory"), affinity(server_core):
            results["memory"] = memory.run(cfg.workdir, cfg.memory_sizes)
    if "deadlines" in cfg.rows:
        with row("deadlines"), affinity(other):
            results["deadlines"] = deadlines.run(
                cfg.workdir,
                cfg.deadlines,
                Profiler(cfg) if cfg.profile else None,
                fill_cores=server_core,
            )
    if "feed" in cfg.rows:
        with row("feed"), affinity(other):
            results["feed"] = feed.run(cfg.workdir, cfg.duration)
    if "push" in cfg.rows:
        with row("push"), affinity(other):
            results["push"] = push.run(cfg.workdir, cfg.duration, cfg.push_outage)
    if "cost" in cfg.rows:
        with row("cost"):
            results["cost"] = cost.run(cfg.workdir, cfg.cost_sizes, server_core, other)
    if "wait" in cfg.rows:
        with row("wait"), affinity(other):
            results["wait"] = wait.run(cfg.workdir, cfg)
    if "workers" in cfg.rows:
        with row("workers"), affinity(other):
            results["workers"] = workers.run(cfg.workdir, cfg)
    if "client" in cfg.rows:
        with row("client"), affinity(other):
            results["client"] = client.run(cfg.workdir)
    if "instructions" in cfg.rows:
        # Counts, not seconds: no core of its own needed.
        with row("instructions"):
            results["instructions"] = instructions.run(cfg.workdir)


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    pin(cfg)
    cfg.workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    results: dict[str, Any] = {
        "machine": support.machine(),
        "config": run_config(cfg),
        "targets": TARGETS,
    }
    load: dict[str, dict[str, list[float]]] = {}
    results["load"] = load

    @contextlib.contextmanager
    def row(name: str) -> Iterator[None]:
        # The load average before and after each row: the machine is shared. A row that
        # fails is reported, and the others still run.
        load[name] = {"start": support.loadavg()}
        try:
            yield
        except Exception as error:
            results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
            print(f"[bench] {name} failed: {error}", file=sys.stderr, flush=True)
        finally:
            load[name]["end"] = support.loadavg()
            loads.write_json(cfg.json, results)

    try:
        _measure(cfg, results, row)
    finally:
        stop_all()
        results["elapsed_s"] = round(time.time() - started, 1)
        loads.write_json(cfg.json, results)
        if not cfg.keep:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    if "cost" in results:
        try:
            title, goal = plot.title_of(results), TARGETS["bytes_per_identity"]
            print(f"plot: {plot.draw(results['cost'], cfg.plot, title, goal)}")
        except ImportError:
            print("plot: skipped, matplotlib is missing (scripts/bootstrap dev)")
    from bench.report import render

    print()
    print(render(results))
    for name, error in results.get("errors", {}).items():
        print(f"\n{name} FAILED: {error}")
    print(f"\nJSON: {cfg.json}  ({results['elapsed_s']} s)")


if __name__ == "__main__":
    main()
