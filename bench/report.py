"""Renders the results as Markdown: the side-by-side table, the CPU each process used, what
Redis executed, the memory breakdown, and the profiles when ``--profile`` ran.

``python -m bench.report [results.json]`` prints it again from saved results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Run = dict[str, Any]


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ms(run: Run | None) -> str:
    return "n/a" if not run else f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f} ms"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def _rps(run: Run, *, distinct: bool = False) -> str:
    notes = []
    if run.get("errors"):
        notes.append(f"errors {run['errors']}")
    if distinct and run.get("wrapped"):
        notes.append("webhooks repeated: not all applied")
    return _n(run["rps"]) + (f" ({'; '.join(notes)})" if notes else "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ingest_rows(ingest: Run, targets: Run, cfg: Run) -> list[list[str]]:
    svc, ref, ratio = ingest["presence"], ingest["reference"], ingest["ratio"]
    goal = targets["ingest"]
    measure = f"webhook ingest, req/s ({cfg['connections']} conn, {cfg['duration_s']:g} s)"
    rows = [
        ["1", measure, _rps(svc, distinct=True), _rps(ref), f"{ratio:.2f}x", f">= {goal}x",
         _verdict(ratio >= goal)],
        ["1", "webhook ingest latency at peak, p50 / p99", _ms(svc), _ms(ref), "", "", ""],
    ]  # fmt: skip
    if work := ingest.get("work_reference"):
        rows.append(["1", "minimal real-work reference (HMAC + coalesced Lua), req/s",
                     _rps(work), _rps(ref), f"{ingest['work_ratio']:.2f}x", "", ""])  # fmt: skip
    half, ref_half = ingest["presence_half_rate"], ingest.get("reference_half_rate")
    p99, goal = half["p99_ms"], targets["half_rate_p99_ms"]
    reached = ""
    if half["achieved_rate"] < 0.95 * half["target_rate"]:
        reached = f"; only {half['achieved_rate']:.0f} req/s reached"
    ours = f"{p99:.1f} ms (p50 {half['p50_ms']:.1f}; at {half['target_rate']:.0f} req/s{reached})"
    theirs = "n/a"
    if ref_half:
        theirs = (
            f"{ref_half['p99_ms']:.1f} ms (p50 {ref_half['p50_ms']:.1f}; at "
            f"{ref_half['target_rate']:.0f} req/s, reached {ref_half['achieved_rate']:.0f})"
        )
    measure = "webhook latency at half the peak rate, open loop: p99"
    rows.append(["1", measure, ours, theirs, "", f"< {goal:g} ms", _verdict(p99 < goal)])
    return rows


def _main_rows(results: Run) -> list[list[str]]:
    targets, cfg = results["targets"], results["config"]
    rows: list[list[str]] = []
    if ingest := results.get("ingest"):
        rows += _ingest_rows(ingest, targets, cfg)
    if get := results.get("get"):
        svc, ref, ratio, goal = get["presence"], get["reference"], get["ratio"], targets["get"]
        rows.append(["2", "GET one identity, req/s", _rps(svc), _rps(ref), f"{ratio:.2f}x",
                     f">= {goal}x", _verdict(ratio >= goal)])  # fmt: skip
        rows.append(["2", "GET one identity latency, p50 / p99", _ms(svc), _ms(ref), "", "", ""])
    if lookup := results.get("lookup"):
        svc, ref = lookup["presence"], lookup["reference_get"]
        measure = (
            f"lookup of 1000 names (POST, {svc['connections']} conn), req/s [identities/s]; "
            "reference: bare JSON GET"
        )
        ours = f"{_rps(svc)} [{_n(svc['identities_per_s'])}]"
        rows.append(["3", measure, ours, _rps(ref), f"{lookup['ratio']:.3f}x", "report", ""])
        rows.append(
            ["3", "lookup of 1000 names latency, p50 / p99", _ms(svc), _ms(ref), "", "", ""]
        )
    if mem := results.get("memory"):
        goal = targets["bytes_per_identity"]
        for size, part in mem["sizes"].items():
            value = part["bytes_per_identity"]
            measure = f"Redis bytes per online identity (1 endpoint), {int(size):,} identities"
            rows.append(["4", measure, _n(value), "", f"{value / goal:.2f}x target",
                         f"<= {goal:g} B", _verdict(value <= goal)])  # fmt: skip
    if dl := results.get("deadlines"):
        value, goal = dl["all_after_deadline_s"], targets["deadlines_s"]
        measure = f"{dl['identities']:,} deadlines due in the same ms: all published after"
        if value is None:
            rows.append(["5", measure, f"incomplete: {dl['published']}", "", "", "", "**MISS**"])
        else:
            ours = f"{value:.2f} s (first {dl['first_after_deadline_s']:.2f} s)"
            rows.append(["5", measure, ours, "", f"{value / goal:.2f}x target", f"<= {goal:g} s",
                         _verdict(value <= goal)])  # fmt: skip
    if fd := results.get("feed"):
        lat, goal = fd["latency_ms"], targets["feed_p99_ms"]
        measure = (
            f"change feed: {fd['clients']:,} SSE clients of one process ({fd['following_all']} "
            f"following all), {fd['rate']:g} changes/s: webhook-to-client p50 / p99"
        )
        missing = fd["deliveries_expected"] - fd["deliveries_received"]
        ours = f"{lat['p50']:.1f} / {lat['p99']:.1f} ms" + (
            f" ({missing:,} deliveries missing)" if missing else ""
        )
        rows.append(["6", measure, ours, "", "", f"p99 < {goal:g} ms",
                     _verdict(lat["p99"] < goal and not missing)])  # fmt: skip
        value, goal = fd["bytes_per_idle_stream"], targets["feed_bytes_per_idle_stream"]
        rows.append(["6", "change feed: service memory per idle stream", f"{value / 1024:.1f} KB",
                     "", "", f"< {goal / 1024:g} KB", _verdict(value < goal)])  # fmt: skip
        rows.append(["6", "change feed: service CPU per change delivered to a client",
                     f"{fd['service_cpu_us_per_delivery']:.1f} us "
                     f"({fd['service_cpu_us_per_change']:.0f} us per change)", "", "", "report",
                     ""])  # fmt: skip
    if wt := results.get("wait"):
        rows += _wait_rows(wt)
    return rows


def _wait_rows(wt: Run) -> list[list[str]]:
    """Row 7: ingest with PRESENCE_REDIS_WAIT_REPLICAS=1 against 0, on a master with a replica."""
    zero, one = wt["wait_0"], wt["wait_1"]
    refused = one.get("outcomes", {}).get("rejected", 0)
    return [
        ["7", "webhook ingest, master + 1 replica, WAIT 1 (vs WAIT 0), req/s", _rps(one),
         _rps(zero), f"{wt['ratio']:.2f}x", "report", ""],
        ["7", "webhook latency, WAIT 1 (vs WAIT 0), p50 / p99", _ms(one), _ms(zero), "", "",
         f"{refused} refused" if refused else ""],
    ]  # fmt: skip


def _cpu_rows(results: Run) -> list[list[str]]:
    rows = []
    runs = {
        "ingest": (
            "presence",
            "reference",
            "work_reference",
            "presence_half_rate",
            "reference_half_rate",
        ),
        "get": ("presence", "reference"),
        "lookup": ("presence",),
    }
    for name, keys in runs.items():
        for key in keys:
            run = (results.get(name) or {}).get(key)
            if run:
                cpu = run["cpu_percent_of_one_core"]
                redis = _n(cpu["redis"]) if "redis" in cpu else "-"
                per_request = cpu["server"] / 100 / run["rps"] * 1e6 if run["rps"] else None
                rows.append([f"{name}: {key}", run["generator"], _n(run["rps"]), _n(cpu["server"]),
                             _n(per_request), redis, _n(cpu["generator"])])  # fmt: skip
    if dl := results.get("deadlines"):
        cpu = dl["cpu_percent_of_one_core_during_sweep"]
        rows.append(["deadlines: sweep", "-", "", _n(cpu["service"]), "", _n(cpu["redis"]), "-"])
    return rows


def _redis_rows(results: Run) -> list[list[str]]:
    rows = []
    for name in ("ingest", "get", "lookup"):
        run = (results.get(name) or {}).get("presence")
        if run and run.get("redis_commands"):
            seconds = run.get("duration_s") or results["config"]["duration_s"]
            for command, s in list(run["redis_commands"].items())[:3]:
                rows.append([name, command, _n(s["calls"] / seconds), _n(s["usec_per_call"], 1),
                             _n(s["usec"] / seconds / 1e4)])  # fmt: skip
    dl = results.get("deadlines") or {}
    for command, s in list((dl.get("redis_commands_during_sweep") or {}).items())[:3]:
        rows.append(
            ["deadlines (total calls)", command, _n(s["calls"]), _n(s["usec_per_call"], 1), ""]
        )
    return rows


def _memory_rows(mem: Run) -> list[list[str]]:
    rows = []
    for size, part in mem["sizes"].items():
        b, n = part["breakdown"], part["identities"]
        rows.append([
            f"{int(size):,}", _n(part["used_memory_delta"] / n), _n(b["identity_hashes_total"] / n),
            _n(b["online_index_total"] / n), _n(b["due_set_total"] / n),
            _n(b["counters_total"] / n, 1), _n(b["unaccounted_main_dict_etc"] / n),
            _n(part["fill_rate_per_s"]),
        ])  # fmt: skip
    return rows


def _profile(name: str, prof: Run) -> list[str]:
    functions = [[f"`{k}`", str(v)] for k, v in prof["self_by_function_percent"][:15]]
    return [
        f"\nProfile of the service during {name} (py-spy, {prof['samples']} samples, busy "
        f"{prof['busy_percent']}% of the time); self time by file:\n",
        _table(["file", "%"], [[f"`{k}`", str(v)] for k, v in prof["self_by_file_percent"][:12]]),
        "\nself time by function:\n",
        _table(["function", "%"], functions),
    ]  # fmt: skip


def render(results: Run) -> str:
    cfg = results["config"]
    head = ["#", "measure", "presence", "bare reference", "ratio", "target", "result"]
    out = [_table(head, _main_rows(results))]
    if cpu := _cpu_rows(results):
        out.append(f"\nCPU, % of one core over each run ({cfg['pinning']}):\n")
        head = [
            "run",
            "generator",
            "req/s",
            "server",
            "server CPU us/request",
            "redis",
            "generator",
        ]
        out.append(_table(head, cpu))
    if redis := _redis_rows(results):
        out.append(
            "\nRedis commands during the presence runs (INFO commandstats, top 3 by time):\n"
        )
        head = ["run", "command", "calls/s", "usec/call", "% of Redis core"]
        out.append(_table(head, redis))
    if mem := results.get("memory"):
        out.append(
            "\nRedis memory per identity, bytes (used_memory delta; MEMORY USAGE SAMPLES 0):\n"
        )
        head = ["identities", "total", "identity hash", "online index", "due set", "counters",
                "rest (keyspace dict)", "fills/s"]  # fmt: skip
        out.append(_table(head, _memory_rows(mem)))
        last = list(mem["sizes"].values())[-1]["breakdown"]
        out.append(
            f"\nEncodings: hash {last['hash_encoding']}, online {last['online_zset_encoding']}, "
            f"due {last['due_zset_encoding']}. Example key `{last['example_key']}` "
            f"({len(last['example_key'])} bytes), fields `{json.dumps(last['example_fields'])}`"
        )
    for name in ("ingest", "get", "lookup", "deadlines"):
        prof = (results.get(name) or {}).get("profile")
        if prof and "samples" in prof:
            out += _profile(name, prof)
    return "\n".join(out)


if __name__ == "__main__":
    default = Path(__file__).parent / "results" / "latest.json"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    print(render(json.loads(path.read_text())))
