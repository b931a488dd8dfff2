"""The benchmarks' own parts that a wrong figure would hide in: the fills' names and endpoints,
the cost row's webhooks (every one must really be applied, or the CPU per webhook measures
duplicates), and the report over the saved results."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

from bench.cost import Traffic
from bench.fill import NAME_LENGTHS, Step, apply_batches, endpoint_of, identity_name, make_store
from bench.instructions import Counted, reference_command, send_all
from bench.report import render
from harness.processes import RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.model import Outcome
from presence.twilio.samples import SERVICE_SID

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "latest.json"


def test_fill_names_are_unique_and_spread_evenly_over_10_to_40_characters() -> None:
    names = [identity_name("u", i) for i in range(1_000_000)]

    lengths = Counter(len(name) for name in names)
    assert len(set(names)) == len(names)
    assert set(lengths) == set(NAME_LENGTHS)
    assert max(lengths.values()) < 1.1 * min(lengths.values())
    assert identity_name("u", 7) == identity_name("u", 7)


def test_fill_endpoints_are_lowercase_uuids_the_store_packs_in_16_bytes() -> None:
    endpoints = {endpoint_of("c", i, k) for i in range(1000) for k in range(8)}

    assert len(endpoints) == 8000
    assert all(UUID.match(endpoint) for endpoint in endpoints)


def test_cost_traffic_keeps_every_identity_at_its_endpoints() -> None:
    n, endpoints = 50, 2
    connected = {i: {endpoint_of("c", i, k) for k in range(endpoints)} for i in range(n)}
    names = {identity_name("c", i): i for i in range(n)}
    last_event_id = 0

    for params in Traffic(n, endpoints).webhooks(5000):
        i, endpoint = names[params["Identity"]], params["EndpointId"]
        event_id = int(params["EventId"])
        assert event_id > last_event_id
        last_event_id = event_id
        if params["EventType"] == "endpoint_disconnected":
            connected[i].remove(endpoint)
        else:
            assert endpoint not in connected[i]
            connected[i].add(endpoint)
        assert params["IsIdentityOnline"] == ("true" if connected[i] else "false")
        assert len(connected[i]) in (endpoints - 1, endpoints)


async def test_cost_traffic_on_a_filled_store_is_applied_whole(
    redis: Redis, redis_server: RedisServer
) -> None:
    n, endpoints = 40, 2
    store = make_store(redis_server.url)
    try:
        await apply_batches(
            store, "c", 0, n, *(Step(True, k + 1, endpoint=k) for k in range(endpoints))
        )
        outcomes: Counter[Outcome] = Counter()
        for params in Traffic(n, endpoints).webhooks(600):
            event = parse_event(list(params.items()))
            assert isinstance(event, ReachabilityEvent)
            outcomes[(await store.apply_reachability(event)).outcome] += 1
        stats = await store.stats(SERVICE_SID)
    finally:
        await store.close()

    assert outcomes == {Outcome.APPLIED: 600}
    assert stats.online == n
    # The reconnects still queued (one identity each) are the endpoints missing.
    assert n * (endpoints - 1) <= stats.endpoints <= n * endpoints


def test_the_report_gives_a_verdict_for_every_target_of_the_saved_results() -> None:
    results = json.loads(RESULTS.read_text())

    text = render(results)

    judged = [line for line in text.splitlines() if line.endswith(("**PASS** |", "**MISS** |"))]
    per_row = {"ingest": 2, "get": 1, "lookup": 1, "deadlines": 3}
    expected = sum(count for row, count in per_row.items() if row in results)
    # Online, after a flap, offline: for each size.
    expected += 3 * len((results.get("memory") or {}).get("sizes", {}))
    assert len(judged) >= expected


def test_instructions_are_counted_around_the_requests_only(tmp_path: Path) -> None:
    """Row "instructions": a server under callgrind counts what twice the requests cost as
    about twice, and nothing of its start or its idle time between counts."""
    with Counted(tmp_path, "reference", reference_command()) as reference:
        url = f"{reference.url}/v1/services/{SERVICE_SID}/identities/alice"
        asyncio.run(send_all([("GET", url, {})] * 20))
        once = reference.count([("GET", url, {})] * 50)
        time.sleep(1)  # idle, not counted
        twice = reference.count([("GET", url, {})] * 100)
    # An aiohttp request is some 10^5 instructions: a count of the start (10^9) or of
    # nothing at all would be far outside.
    assert 20_000 < once / 50 < 2_000_000, once
    assert 1.7 < twice / once < 2.3, (once, twice)
