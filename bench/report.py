"""Renders the results as Markdown: every target with its figure and PASS or MISS, the CPU each
process used, what Redis executed, the memory breakdown, the cost table, and the profiles when
``--profile`` ran.

``python -m bench.report [results.json]`` prints it again from saved results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.targets import TARGETS

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


def _per_request(run: Run) -> float | None:
    """Server CPU us per request: measured when the run has it, else from its % and req/s."""
    if run.get("server_cpu_us_per_request") is not None:
        value: float = run["server_cpu_us_per_request"]
        return value
    cpu = run["cpu_percent_of_one_core"]["server"]
    return cpu / 100 / run["rps"] * 1e6 if run["rps"] else None


def _cpu_note(run: Run) -> str:
    used = run["cpu_percent_of_one_core"]["server"]
    return f"{_n(_per_request(run))} us CPU/request, {used:.0f}% of its core"


def _ingest_rows(ingest: Run, targets: Run, cfg: Run) -> list[list[str]]:
    svc, ref, ratio = ingest["presence"], ingest["reference"], ingest["ratio"]
    goal = targets["ingest"]
    measure = f"webhook ingest, req/s ({cfg['connections']} conn, {cfg['duration_s']:g} s)"
    rows = [
        ["1", measure, _rps(svc, distinct=True), _rps(ref), f"{ratio:.2f}x", f">= {goal}x",
         _verdict(ratio >= goal)],
        ["1", "webhook ingest: CPU per request, CPU used", _cpu_note(svc), _cpu_note(ref),
         _cpu_ratio(svc, ref), "", ""],
        ["1", "webhook ingest latency at peak, p50 / p99", _ms(svc), _ms(ref), "", "", ""],
    ]  # fmt: skip
    cpu, ref_cpu = _per_request(svc), _per_request(ref)
    if cpu and ref_cpu:
        goal = targets["ingest_cpu"]
        rows.append(["1", "webhook ingest: service CPU per webhook against the reference's per "
                     "request", f"{cpu:.0f} us", f"{ref_cpu:.0f} us", f"{cpu / ref_cpu:.2f}x",
                     f"<= {goal:g}x", _verdict(cpu / ref_cpu <= goal)])  # fmt: skip
    if run32 := ingest.get("connections_32"):
        svc32, ref32, ratio32 = run32["presence"], run32["reference"], run32["ratio"]
        goal = targets["ingest"]
        rows.append(["1", f"webhook ingest, req/s (32 conn, {cfg['duration_s']:g} s)",
                     _rps(svc32, distinct=True), _rps(ref32), f"{ratio32:.2f}x",
                     f">= {goal}x", _verdict(ratio32 >= goal)])  # fmt: skip
    if busy := ingest.get("busy"):
        heard = busy["listeners"]
        rows.append(["1", f"webhook ingest with {heard['streams']:,} feed streams and a push "
                     "subscription open, req/s", _rps(busy["presence"], distinct=True), _rps(ref),
                     f"{busy['ratio']:.2f}x", "report",
                     f"{heard['stream_changes']:,} changes to streams, {heard['pushed']:,} "
                     "pushed"])  # fmt: skip
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
    measure = "webhook latency at half the service's peak rate, open loop: p99"
    rows.append(["1", measure, ours, theirs, "", f"< {goal:g} ms", _verdict(p99 < goal)])
    return rows


def _cpu_ratio(svc: Run, ref: Run) -> str:
    """The ratio the CPU per request predicts for a server given a whole core."""
    ours, theirs = _per_request(svc), _per_request(ref)
    return f"({theirs / ours:.2f}x by CPU)" if ours and theirs else ""


def _read_rows(results: Run, targets: Run) -> list[list[str]]:
    rows: list[list[str]] = []
    if get := results.get("get"):
        svc, ref, ratio, goal = get["presence"], get["reference"], get["ratio"], targets["get"]
        rows.append(["2", "GET one identity, req/s", _rps(svc), _rps(ref), f"{ratio:.2f}x",
                     f">= {goal}x", _verdict(ratio >= goal)])  # fmt: skip
        rows.append(["2", "GET one identity: CPU per request, CPU used", _cpu_note(svc),
                     _cpu_note(ref), _cpu_ratio(svc, ref), "", ""])  # fmt: skip
        rows.append(["2", "GET one identity latency, p50 / p99", _ms(svc), _ms(ref), "", "", ""])
    if lookup := results.get("lookup"):
        svc, goal = lookup["presence"], targets["lookup_names_per_s"]
        names = svc["identities_per_s"]
        per_cpu = 1000 / (_per_request(svc) or 1) * 1e6
        measure = (
            f"lookup of 1000 names (POST, {svc['connections']} conn): names/s on the service's "
            "one core"
        )
        ours = (
            f"{_n(names)} ({_n(svc['rps'])} req/s; {_n(per_cpu)} names per CPU-second, "
            f"{svc['cpu_percent_of_one_core']['server']:.0f}% of its core)"
        )
        rows.append(["2", measure, ours, "", "", f">= {goal:,}", _verdict(names >= goal)])
        rows.append(["2", "lookup of 1000 names latency, p50 / p99", _ms(svc), "", "", "", ""])
    return rows


def _memory_rows(mem: Run, targets: Run) -> list[list[str]]:
    rows: list[list[str]] = []
    goal, off_goal = targets["bytes_per_identity"], targets["offline_bytes_per_identity"]
    for size, part in mem["sizes"].items():
        n = f"{int(size):,}"
        value = part["online"]["bytes_per_identity"]
        rows.append(["3", f"Redis bytes per online identity (1 endpoint), {n} identities",
                     _n(value, 1), "", f"{value / goal:.2f}x target", f"<= {goal:g} B",
                     _verdict(value <= goal)])  # fmt: skip
        if flap := part.get("after_flap"):
            value = flap["bytes_per_identity"]
            # Results recorded before the flap had a target of its own were judged by 200 B.
            flap_goal = targets.get("flapped_bytes_per_identity", goal)
            rows.append(["3", f"the same after one rebalancing flap each (steady state), {n}",
                         _n(value, 1), "", f"{value / flap_goal:.2f}x target",
                         f"<= {flap_goal:g} B", _verdict(value <= flap_goal)])  # fmt: skip
        if off := part.get("offline"):
            value = off["bytes_per_identity"]
            rows.append(["3", f"Redis bytes per offline identity (compacted), {n}",
                         _n(value, 1), "", f"{value / off_goal:.2f}x target",
                         f"<= {off_goal:g} B", _verdict(value <= off_goal)])  # fmt: skip
        online = part["online"]
        rows.append(["3", f"change feed: bytes per change kept (retention), {n}",
                     f"{_n(online['feed_bytes_per_change'], 1)} ({online['feed_changes']:,} "
                     "changes)", "", "", "report", ""])  # fmt: skip
    return rows


def _redis_time_rows(rt: Run, targets: Run) -> list[list[str]]:
    """This release's apply_event against the previous release's script, same stream."""
    now, before, goal = rt["current"], rt["previous"], targets["redis_time_ratio"]
    measure = (
        f"Redis time per webhook, {rt['identities']:,} identities x {rt['rounds']} rounds: "
        f"apply_event ({now['command']}) vs the previous release's script ({before['command']})"
    )
    return [
        ["redis", measure, f"{now['usec_per_call']:.1f} us", f"{before['usec_per_call']:.1f} us",
         f"{rt['ratio']:.2f}x", f"<= {goal}x", _verdict(rt["ratio"] <= goal)],
    ]  # fmt: skip


def _deadline_rows(dl: Run, targets: Run) -> list[list[str]]:
    n = f"{dl['identities']:,}"
    last, first = dl["all_after_deadline_s"], dl["first_after_deadline_s"]
    rows: list[list[str]] = []
    goal = targets["deadlines_s"]
    measure = f"{n} deadlines due in the same ms: all published within"
    if last is None:
        rows.append(["4", measure, f"incomplete: {dl['published']:,}", "", "", f"<= {goal:g} s",
                     "**MISS**"])  # fmt: skip
    else:
        rows.append(["4", measure, f"{last:.2f} s", "", f"{last / goal:.2f}x target",
                     f"<= {goal:g} s", _verdict(last <= goal)])  # fmt: skip
    goal = targets["first_deadline_s"]
    rows.append(["4", f"{n} deadlines: the first published within",
                 "n/a" if first is None else f"{first:.3f} s", "", "", f"<= {goal:g} s",
                 _verdict(None if first is None else first <= goal)])  # fmt: skip
    value, goal = dl.get("redis_us_per_deadline"), targets["redis_us_per_deadline"]
    if value is not None:
        measure = "the sweeper's Redis time per deadline (fcall usec / deadlines; format 1: 51 us)"
        rows.append(["4", measure, f"{value:.1f} us", "", f"{value / goal:.2f}x target",
                     f"<= {goal:g} us", _verdict(value <= goal)])  # fmt: skip
    return rows


def _feed_rows(fd: Run, targets: Run) -> list[list[str]]:
    lat, goal = fd["latency_ms"], targets["feed_p99_ms"]
    measure = (
        f"change feed: {fd['clients']:,} SSE clients of one process ({fd['following_all']} "
        f"following all), {fd['rate']:g} changes/s: webhook-to-client p50 / p99"
    )
    missing = fd["deliveries_expected"] - fd["deliveries_received"]
    ours = f"{lat['p50']:.1f} / {lat['p99']:.1f} ms"
    if missing:
        ours += f" ({missing:,} deliveries missing"
        if "changes_short" in fd:  # older results lack it
            answer = fd["webhook_answer_ms"]["max"]
            ours += f", of {fd['changes_short']:,} changes; slowest webhook answer {answer:,.0f} ms"
        ours += ")"
    value, idle_goal = fd["bytes_per_idle_stream"], targets["feed_bytes_per_idle_stream"]
    return [
        ["feed", measure, ours, "", "", f"p99 < {goal:g} ms",
         _verdict(lat["p99"] < goal and not missing)],
        ["feed", "change feed: service memory per idle stream", f"{value / 1024:.1f} KB", "", "",
         f"< {idle_goal / 1024:g} KB", _verdict(value < idle_goal)],
        ["feed", "change feed: service CPU per change delivered to a client",
         f"{fd['service_cpu_us_per_delivery']:.1f} us "
         f"({fd['service_cpu_us_per_change']:.0f} us per change)", "", "", "report", ""],
    ]  # fmt: skip


def _main_rows(results: Run) -> list[list[str]]:
    # Results saved before a target existed are judged by today's.
    targets, cfg = {**TARGETS, **results["targets"]}, results["config"]
    rows: list[list[str]] = []
    if ingest := results.get("ingest"):
        rows += _ingest_rows(ingest, targets, cfg)
    rows += _read_rows(results, targets)
    if rt := results.get("redis"):
        rows += _redis_time_rows(rt, targets)
    if mem := results.get("memory"):
        rows += _memory_rows(mem, targets)
    if dl := results.get("deadlines"):
        rows += _deadline_rows(dl, targets)
    if "memory" in results or "deadlines" in results:
        # Target 5, the webhook storm, is measured by `presence simulate --storm`, not here.
        rows.append(["5", "webhook storm", "see `presence simulate --storm`", "", "", "", "n/a"])
    if cost := results.get("cost"):
        worst = max(cost["points"].values(), key=lambda p: p["bytes_per_identity"])
        rows.append(["6", "cost as the work grows: see the cost table",
                     f"{len(cost['points'])} points, up to {_n(worst['bytes_per_identity'])} "
                     f"B per identity ({worst['identities']:,} x {worst['endpoints']})", "", "",
                     "report", ""])  # fmt: skip
    if fd := results.get("feed"):
        rows += _feed_rows(fd, targets)
    if ps := results.get("push"):
        rows += _push_rows(ps, targets)
    if wt := results.get("wait"):
        rows += _wait_rows(wt)
    if wk := results.get("workers"):
        rows += _workers_rows(wk)
    if cl := results.get("client"):
        rows += _client_rows(cl)
    if ins := results.get("instructions"):
        rows += _instruction_rows(ins)
    return rows


def _instruction_rows(ins: Run) -> list[list[str]]:
    """Instructions per request under callgrind: the figure that the machine's load does not
    move, to compare one change with the next (the CPU rows stay the verdicts)."""
    presence, bare, ratio = ins["presence"], ins["reference"], ins["ratio"]
    return [
        ["ins", "instructions per webhook (callgrind)", f"{presence['webhook']:,.0f}",
         f"{bare['webhook']:,.0f}", f"{ratio['webhook']:.2f}x", "report", ""],
        ["ins", "instructions per webhook: minimal real-work reference (callgrind)",
         f"{ins['work_reference']['webhook']:,.0f}", f"{bare['webhook']:,.0f}",
         f"{ins['work_reference']['webhook'] / bare['webhook']:.2f}x", "report", ""],
        ["ins", "instructions per GET of one identity (callgrind)", f"{presence['get']:,.0f}",
         f"{bare['get']:,.0f}", f"{ratio['get']:.2f}x", "report", ""],
        ["ins", "instructions per name of a 1000-name lookup (callgrind)",
         f"{presence['lookup_name']:,.0f}", "", "", "report", ""],
    ]  # fmt: skip


def _workers_rows(wk: Run) -> list[list[str]]:
    """Row 8: two worker processes against one, neither pinned (both cores shared)."""
    one, two = wk["one"], wk["two"]

    def cpu(run: Run) -> str:
        share = run["service_cpu_percent_of_one_core"]
        return f"{run['service_cpu_us_per_webhook']:.0f} us ({share:.0f}% of a core)"

    return [
        ["8", "webhook ingest, 2 workers (vs 1), unpinned, req/s", _rps(two, distinct=True),
         _rps(one, distinct=True), f"{wk['ratio']:.2f}x", "report", ""],
        ["8", "service CPU per webhook, 2 workers (vs 1), all its processes", cpu(two), cpu(one),
         "", "report", ""],
    ]  # fmt: skip


def _push_latency(run: Run, rate: float) -> str:
    lat = run["latency_ms"]
    text = "n/a" if lat["p50"] is None else f"{lat['p50']:.1f} / {lat['p99']:.1f} ms"
    sent = run.get("sent_per_s")  # results saved before it was measured have none
    if sent is not None and sent < 0.95 * rate:
        # The senders wait for each answer: a service slow to answer gets fewer.
        text += f" (sent at {sent:,.0f} of {rate:,.0f} changes/s)"
    if run["missing"]:
        text += f" ({run['missing']:,} of {run['changes']:,} missing)"
    if run["out_of_order"]:
        text += f" ({run['out_of_order']:,} out of order)"
    return text


def _push_ok(run: Run, goal: float) -> str:
    p99 = run["latency_ms"]["p99"]
    return _verdict(
        p99 is not None and p99 < goal and not run["missing"] and not run["out_of_order"]
    )


def _push_rows(ps: Run, targets: Run) -> list[list[str]]:
    """Push subscriptions: latency at the receiver, CPU per delivery, a receiver coming back."""
    one, many, down = ps["one_subscription"], ps["many_services"], ps["outage"]
    goal = targets["push_p99_ms"]
    reference = one["reference"]["cpu_us_per_post"]
    back = down["first_attempt_after_return_s"]
    caught_up = down["first_2xx_to_lag_0_s"]
    return [
        ["push", f"push: 1 subscription, {one['rate']:g} changes/s, a 1 ms receiver: change to "
         "delivery p50 / p99", _push_latency(one, one["rate"]), "", "", f"p99 < {goal:g} ms",
         _push_ok(one, goal)],
        ["push", "push: service CPU per change, its webhook taken in and pushed out (vs a bare "
         "aiohttp client's per signed POST)",
         f"{one['service_cpu_us_per_delivery']:.0f} us", f"{reference:.0f} us",
         f"{one['service_cpu_us_per_delivery'] / max(reference, 0.1):.1f}x", "report", ""],
        ["push", f"push: {many['services']} services x 1 subscription, "
         f"{many['rate_per_service']:g} changes/s each: p50 / p99",
         _push_latency(many, many["services"] * many["rate_per_service"]), "", "",
         f"p99 < {goal:g} ms", _push_ok(many, goal)],
        ["push", f"push: receiver down {down['down_s']:g} s ({down['changes']:,} changes), then "
         "back: wait for the first attempt", "n/a" if back is None else f"{back:.1f} s", "", "",
         "report (backoff <= 60 s)", ""],
        ["push", "push: then from its first 2xx to a lag of 0",
         "n/a" if caught_up is None else f"{caught_up:.2f} s"
         + (f" ({down['missing']:,} missing)" if down["missing"] else ""), "", "", "report",
         _verdict(caught_up is not None and not down["missing"])],
    ]  # fmt: skip


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


def _client_rows(cl: Run) -> list[list[str]]:
    """Row "client": each client's own ceiling against a stand-in feed, and its memory."""
    rows = []
    for kind, label in (("python", "Python"), ("node", "JavaScript (Node)")):
        if (one := cl.get(kind)) is None:
            continue
        rows += [
            ["client", f"{label} client: changes per second it takes in (a stand-in feed as fast "
             f"as it reads; {one['changes']:,} changes, {one['event_bytes']} B each)",
             f"{one['changes_per_s']:,}", "", "", "report", ""],
            ["client", f"{label} client: memory per 10,000 identities held "
             f"({one['identities_held']:,} listed): RSS (heap)",
             f"{one['rss_bytes_per_10k'] / 1e6:.2f} MB ({one['heap_bytes_per_10k'] / 1e6:.2f} MB)",
             "", "", "report", ""],
        ]  # fmt: skip
    return rows


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
                waited = run.get("waited_for_cpu_percent", {}).get("server")
                rows.append([f"{name}: {key}", run["generator"], _n(run["rps"]), _n(cpu["server"]),
                             _n(waited), _n(_per_request(run)), redis,
                             _n(cpu["generator"])])  # fmt: skip
    if dl := results.get("deadlines"):
        cpu = dl["cpu_percent_of_one_core_during_sweep"]
        waited = (dl.get("waited_for_cpu_percent_during_sweep") or {}).get("service")
        rows.append(
            ["deadlines: sweep", "-", "", _n(cpu["service"]), _n(waited), "", _n(cpu["redis"]),
             "-"]
        )  # fmt: skip
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


def _encodings(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())) or "none"


def _memory_table(mem: Run) -> list[list[str]]:
    rows = []
    for size, part in mem["sizes"].items():
        n = int(size)
        for state in ("online", "after_flap", "offline"):
            phase = part.get(state)
            if not phase:
                continue
            b = phase["breakdown"]
            fields, values = b["fields_per_page"], b["value_bytes"]
            shape = (
                f"{b['pages']:,} pages ({_encodings(b['page_encodings'])}), "
                f"{fields['mean']:g} fields each (max {fields['max']}, {fields['over_128']} over "
                f"128); values {values['min']}-{values['max']} B"
                if b["pages"]
                else f"{b['graveyards']:,} graveyards, {b['graveyard_records']:,} records"
            )
            rows.append([
                f"{n:,}", state.replace("_", " "), _n(phase["bytes_per_identity"], 1),
                _n(b["pages_total"] / n, 1), _n(b["graveyards_total"] / n, 1),
                _n(b["due_pages_total"] / n, 1), _n(b["counters_total"] / n, 2),
                _n(b["rest_keyspace_etc"] / n, 1), shape,
            ])  # fmt: skip
    return rows


def _cost_table(cost: Run) -> list[list[str]]:
    rows = []
    for p in sorted(cost["points"].values(), key=lambda p: (p["identities"], p["endpoints"])):
        values = p["value_bytes"]
        rows.append([
            f"{p['identities']:,}", str(p["endpoints"]), _n(p["bytes_per_identity"], 1),
            _encodings(p["page_encodings"]), f"{p['fields_per_page']['mean']:g}",
            f"{values['min']}-{values['max']}", _n(p["server_cpu_us_per_webhook"], 1),
            _n(p["redis_cpu_us_per_webhook"], 1), _n(p["redis_evalsha_us_per_webhook"], 1),
            _n(p["rps"]),
            f"{p['cpu_percent_of_one_core']['server']:.0f}% "
            f"(waited {p.get('waited_for_cpu_percent', {}).get('server', 0):.0f}%)",
            f"{p['loadavg'][0]:.2f}",
        ])  # fmt: skip
    return rows


def _load(results: Run) -> str:
    machine = results.get("machine", {})
    parts = [f"at start {' '.join(str(x) for x in machine.get('loadavg_at_start', []))}"]
    for row, seen in (results.get("load") or {}).items():
        start, end = seen.get("start"), seen.get("end")
        if start and end:
            parts.append(f"{row} {start[0]:.2f} -> {end[0]:.2f}")
    return "Load average (1 min; 2 cores): " + "; ".join(parts) + "."


def render(results: Run) -> str:
    cfg = results["config"]
    head = ["#", "measure", "presence", "bare reference", "ratio", "target", "result"]
    out = [_table(head, _main_rows(results)), "", _load(results)]
    if cpu := _cpu_rows(results):
        out.append(f"\nCPU, % of one core over each run ({cfg['pinning']}):\n")
        head = [
            "run",
            "generator",
            "req/s",
            "server",
            "server waited for a CPU",
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
            "\nRedis memory per identity, bytes (used_memory delta without the change feed; "
            "parts by MEMORY USAGE SAMPLES 0):\n"
        )
        head = ["identities", "state", "total", "pages", "graveyards", "due pages", "counters",
                "rest (keyspace)", "layout"]  # fmt: skip
        out.append(_table(head, _memory_table(mem)))
    if cost := results.get("cost"):
        out.append(
            f"\nCost as the work grows (bytes: used_memory without the feed; CPU: utime + stime "
            f"over {cost['duration_s']:g} s of wrk after {cost['warmup_s']:g} s of warm-up, "
            "divided by the webhooks answered):\n"
        )
        head = ["identities", "endpoints", "B/identity", "pages", "fields/page", "value B",
                "service CPU us/webhook", "Redis CPU us/webhook", "apply_event us/call", "req/s",
                "service CPU (waited for one)", "load"]  # fmt: skip
        out.append(_table(head, _cost_table(cost)))
    for name in ("ingest", "get", "lookup", "deadlines"):
        prof = (results.get(name) or {}).get("profile")
        if prof and "samples" in prof:
            out += _profile(name, prof)
    return "\n".join(out)


def _profile(name: str, prof: Run) -> list[str]:
    functions = [[f"`{k}`", str(v)] for k, v in prof["self_by_function_percent"][:15]]
    return [
        f"\nProfile of the service during {name} (py-spy, {prof['samples']} samples, busy "
        f"{prof['busy_percent']}% of the time); self time by file:\n",
        _table(["file", "%"], [[f"`{k}`", str(v)] for k, v in prof["self_by_file_percent"][:12]]),
        "\nself time by function:\n",
        _table(["function", "%"], functions),
    ]  # fmt: skip


if __name__ == "__main__":
    default = Path(__file__).parent / "results" / "latest.json"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    print(render(json.loads(path.read_text())))
