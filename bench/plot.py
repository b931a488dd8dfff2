"""Draws the cost row as a PNG: Redis bytes per identity, and the CPU per webhook of the service
and of Redis, against the number of identities, one line per number of endpoints.

``python -m bench.plot [results.json] [out.png]`` (defaults: bench/results/latest.json,
docs/cost.png). Needs matplotlib, the ``bench`` extra (``bench/run`` installs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.support import ROOT

DEFAULT_OUT = ROOT / "docs" / "cost.png"


def draw(cost: dict[str, Any], out: Path, title: str = "", target: float = 200.0) -> Path:
    """Writes the plot of a cost row's results to ``out``; ``target`` is row 3's, in bytes per
    online identity."""
    import matplotlib

    # No display: render to a file only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = cost["points"].values()
    sizes = sorted({p["identities"] for p in points})
    figure, (memory, cpu) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for e, colour in zip(cost["endpoints"], ("tab:blue", "tab:orange", "tab:green"), strict=False):
        line = sorted((p for p in points if p["endpoints"] == e), key=lambda p: p["identities"])
        xs = [p["identities"] for p in line]
        label = f"{e} endpoint{'s' if e > 1 else ''}"
        ys = [p["bytes_per_identity"] for p in line]
        memory.plot(xs, ys, "o-", color=colour, label=label)
        for x, y in zip(xs, ys, strict=True):
            memory.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colour)  # fmt: skip
        for side, field, style in (("service", "server", "o-"), ("Redis", "redis", "s--")):
            ys = [p[f"{field}_cpu_us_per_webhook"] for p in line]
            cpu.plot(xs, ys, style, color=colour, label=f"{side}, {label}")
    memory.axhline(
        target,
        color="grey",
        linewidth=0.8,
        linestyle=":",
        label=f"target, 1 endpoint: {target:g} B",
    )
    by_identities = {
        "xscale": "log",
        "xticks": sizes,
        "xticklabels": [f"{n:,}" for n in sizes],
        "xlabel": "identities",
    }
    memory.set(
        **by_identities,
        ylabel="bytes per identity (used_memory, without the feed)",
        title="Redis memory per identity",
        ylim=(0, 1.1 * max(p["bytes_per_identity"] for p in points)),
    )
    cpu.set(
        **by_identities,
        ylabel="CPU microseconds per webhook",
        title="CPU per webhook (utime + stime / webhooks answered)",
        ylim=(0, None),
    )
    for axes in (memory, cpu):
        axes.minorticks_off()
        # Room for the labels of the last points.
        axes.margins(x=0.08)
    memory.legend(fontsize=8)
    cpu.legend(fontsize=7, ncols=2)
    if title:
        figure.suptitle(title, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def title_of(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    load = results.get("load", {}).get("cost", {}).get("start")
    text = f"presence bench, cost row of the run of {machine.get('date', '')}"
    return text + (f" (load average {load[0]:.2f} when the row started)" if load else "")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    results = json.loads(source.read_text())
    goal = results.get("targets", {}).get("bytes_per_identity", 200.0)
    print(draw(results["cost"], target, title_of(results), goal))
