"""``/metrics``: what an operator's Prometheus scrapes, counted from real webhooks on Redis."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import RedisServer
from presence.feed.cursor import FeedCursor, Position
from presence.metrics import LATENCY_BUCKETS, Metrics
from presence.model import Change
from presence.store.connections import redis_client
from presence.twilio.samples import SERVICE_SID, collection_event, reachability
from tests.support import (
    AUTH_TOKEN,
    EventStream,
    ManualClock,
    RunningApp,
    make_store,
    wait_until,
)

Start = Callable[..., Awaitable[RunningApp]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: RunningApp) -> Samples:
    response = await service.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def connect(identity: str, event_id: int, endpoint: str = "E1") -> dict[str, str]:
    return reachability(identity, endpoint, event_id, True, connected=True)


def disconnect(identity: str, event_id: int, endpoint: str = "E1") -> dict[str, str]:
    return reachability(identity, endpoint, event_id, False, connected=False)


async def test_webhooks_are_counted_by_event_type_and_outcome(start_service: Start) -> None:
    service = await start_service()
    assert await service.status_of(connect("alice", 5)) == "applied"
    assert await service.status_of(connect("alice", 5)) == "duplicate"
    assert await service.status_of(connect("alice", 4)) == "stale"
    assert await service.status_of(collection_event("document_created")) == "applied"
    assert await service.status_of({**connect("bob", 1), "EventType": "made_up"}) == "ignored"
    forged = await service.post_signed(connect("carol", 1), token="not-the-token")
    assert forged.status == 403
    invalid = await service.post_signed({**connect("carol", 1), "EventId": "-1"})
    assert invalid.status == 400
    wrong_type = await service.client.post(
        "/webhooks/sync", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status == 415

    samples = await scrape(service)
    webhooks = "presence_webhooks_total"
    connected = "endpoint_connected"
    assert value(samples, webhooks, event_type=connected, outcome="applied") == 1
    assert value(samples, webhooks, event_type=connected, outcome="duplicate") == 1
    assert value(samples, webhooks, event_type=connected, outcome="stale") == 1
    assert value(samples, webhooks, event_type="document_created", outcome="applied") == 1
    # An EventType nobody listed never becomes a label value: labels stay a closed set.
    assert value(samples, webhooks, event_type="unknown", outcome="ignored") == 1
    # Unsigned data is not trusted with a label either.
    assert value(samples, webhooks, event_type="unknown", outcome="rejected") == 2
    assert value(samples, webhooks, event_type=connected, outcome="rejected") == 1
    rejected = "presence_webhooks_rejected_total"
    assert value(samples, rejected, reason="invalid_signature") == 1
    assert value(samples, rejected, reason="invalid_payload") == 1
    assert value(samples, rejected, reason="unsupported_media_type") == 1
    assert value(samples, "presence_webhook_duration_seconds_count") == 8
    assert value(samples, "presence_webhooks_in_flight") == 0
    assert value(samples, "presence_changes_published_total", reason="connected") == 1


async def test_changes_flaps_and_expiries_are_counted(
    start_service: Start, redis_server: RedisServer, clock: ManualClock
) -> None:
    store = make_store(redis_client(redis_server.url), clock, grace=10, ttl=60)
    service = await start_service(store=store, sweeper=True)
    assert await service.status_of(connect("alice", 1)) == "applied"
    # The hourly rebalancing: gone and back within the grace.
    assert await service.status_of(disconnect("alice", 2)) == "applied"
    assert await service.status_of(connect("alice", 3, "E2")) == "applied"
    # Bob leaves for good: published when the sweeper finds his deadline passed.
    assert await service.status_of(connect("bob", 1)) == "applied"
    assert await service.status_of(disconnect("bob", 2)) == "applied"
    clock.advance(15)

    async def bob_is_offline() -> bool:
        samples = await scrape(service)
        return value(samples, "presence_changes_published_total", reason="disconnected") == 1

    await wait_until(bob_is_offline, what="the offline deadline to be counted")
    # Alice's endpoint is never named again: it expires after the TTL.
    clock.advance(60)

    async def alice_expired() -> bool:
        samples = await scrape(service)
        return value(samples, "presence_changes_published_total", reason="expired") == 1

    await wait_until(alice_expired, what="the expiry to be counted")
    samples = await scrape(service)
    assert value(samples, "presence_changes_published_total", reason="connected") == 2
    assert value(samples, "presence_flaps_suppressed_total") == 1
    assert value(samples, "presence_endpoints_expired_total") == 1
    assert value(samples, "presence_sweeper_passes_total") > 0


async def test_sweeper_lag_shows_how_late_a_deadline_fired(
    start_service: Start, redis_server: RedisServer, clock: ManualClock
) -> None:
    store = make_store(redis_client(redis_server.url), clock, grace=10)
    service = await start_service(store=store, sweeper=True)
    assert await service.status_of(connect("alice", 1)) == "applied"
    assert await service.status_of(disconnect("alice", 2)) == "applied"
    # As if the sweepers had all been down for 30 s past the deadline.
    clock.advance(10 + 30)

    async def lag_is_reported() -> bool:
        return value(await scrape(service), "presence_sweeper_lag_seconds") > 0

    await wait_until(lag_is_reported, what="the sweeper lag")
    assert value(await scrape(service), "presence_sweeper_lag_seconds") == 30


async def test_redis_errors_are_counted_by_operation(
    start_service: Start, private_redis: RedisServer
) -> None:
    service = await start_service(redis_url=private_redis.url)
    private_redis.stop()
    response = await service.post_signed(connect("alice", 1))
    assert response.status == 503
    assert (await service.client.get("/readyz")).status == 503
    query = await service.client.get("/v1/services/" + connect("a", 1)["ServiceSid"] + "/stats")
    assert query.status == 503

    samples = await scrape(service)
    errors = "presence_redis_errors_total"
    assert value(samples, errors, operation="webhook") == 1
    assert value(samples, errors, operation="readiness") == 1
    assert value(samples, errors, operation="query") == 1
    assert value(samples, "presence_webhooks_rejected_total", reason="store_unavailable") == 1


async def test_change_streams_changes_sent_and_resets_are_counted(start_service: Start) -> None:
    service = await start_service(offline_grace_seconds=0)
    feed = f"/v1/services/{SERVICE_SID}/changes"
    url = str(service.client.make_url(feed))
    async with EventStream(url) as one, EventStream(url) as two:
        assert value(await scrape(service), "presence_feed_streams_open") == 2
        assert await service.status_of(connect("alice", 1)) == "applied"
        await one.wait_for(1)
        await two.wait_for(1)
        await wait_until(lambda: sent_at_least(service, 2), 5, "both changes counted")
    now = FeedCursor.decode((await (await service.client.get(feed)).json())["cursor"])
    old = replace(now, position=Position(now.position.ms - 2 * 86_400_000, 0, 0))
    await service.client.get(feed, params={"since": old.encode()})

    async def closed() -> bool:
        return value(await scrape(service), "presence_feed_streams_open") == 0

    await wait_until(closed, 5, "the streams to close")
    samples = await scrape(service)
    assert value(samples, "presence_feed_changes_sent_total") == 2
    assert value(samples, "presence_feed_resets_total", reason="retention") == 1
    assert value(samples, "presence_feed_clients_dropped_total") == 0


async def sent_at_least(service: RunningApp, count: int) -> bool:
    return value(await scrape(service), "presence_feed_changes_sent_total") >= count


async def test_metric_names_follow_prometheus_conventions(start_service: Start) -> None:
    service = await start_service(twilio_auth_token=AUTH_TOKEN)
    assert await service.status_of(connect("alice", 1)) == "applied"
    response = await service.client.get("/metrics")
    text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    ours = {name: family for name, family in families.items() if name.startswith("presence_")}
    assert set(ours) >= {
        "presence_webhooks",
        "presence_webhooks_rejected",
        "presence_webhook_duration_seconds",
        "presence_webhooks_in_flight",
        "presence_changes_published",
        "presence_flaps_suppressed",
        "presence_endpoints_expired",
        "presence_redis_errors",
        "presence_sweeper_lag_seconds",
        "presence_sweeper_passes",
    }
    for name, family in ours.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert family.documentation, f"{name} has no HELP"
        if family.type == "counter":
            assert all(s.name == name + "_total" for s in family.samples), name
        for sample in family.samples:
            assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in sample.labels)
    # Nothing about who is online leaks into the labels.
    assert "alice" not in text


async def test_a_webhooks_series_are_what_observing_each_would_give() -> None:
    """The webhook and change series are counted in plain numbers and added once an event-loop
    iteration: a scrape in the same iteration sees them all, and none is added twice."""
    metrics = Metrics()
    wanted = CollectorRegistry()
    duration = Histogram("d", "", buckets=LATENCY_BUCKETS, registry=wanted)
    seconds = [0.0005, 0.001, 0.0031, 0.3, 20.0]  # 0.001 sits on a bound: in its bucket
    for _ in seconds:
        metrics.webhook_started()
    metrics.webhook_started()  # still in flight
    for taken in seconds:
        metrics.webhook_finished(taken)
        metrics.webhook("endpoint_connected", "applied")
        duration.observe(taken)
    metrics.webhook("unknown", "rejected")
    change = Change(SERVICE_SID, "alice", True, "connected", 1, 1, "2026-12-07T12:00:00.000Z")
    metrics.published([change, change, replace(change, online=False, reason="expired")])
    metrics.flap_suppressed()
    metrics.flap_suppressed()

    def read(text: bytes) -> Samples:
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples
        }

    buckets = {labels: count for (name, labels), count in read(generate_latest(wanted)).items()}
    for _ in range(2):  # a scrape in the same iteration, then one after it
        samples = read(metrics.exposition())
        assert value(samples, "presence_webhooks_in_flight") == 1
        assert value(
            samples, "presence_webhooks_total", event_type="endpoint_connected", outcome="applied"
        ) == len(seconds)
        assert (
            value(samples, "presence_webhooks_total", event_type="unknown", outcome="rejected") == 1
        )
        assert value(samples, "presence_webhook_duration_seconds_sum") == pytest.approx(
            sum(seconds)
        )
        changes = "presence_changes_published_total"
        assert value(samples, changes, reason="connected") == 2
        assert value(samples, changes, reason="expired") == 1
        assert value(samples, changes, reason="disconnected") == 0
        assert value(samples, "presence_flaps_suppressed_total") == 2
        for (name, labels), count in samples.items():
            if name == "presence_webhook_duration_seconds_bucket":
                assert count == buckets[labels], dict(labels)
        await asyncio.sleep(0)
