"""Prometheus metrics, served at ``/metrics``.

One ``Metrics`` per process. Under ``presence serve --workers N`` every worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor), and whichever worker
answers a scrape reports the sum over all of them, so one scrape sees the whole host.
"""

from __future__ import annotations

import asyncio
import math
import os
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from presence.feed.entries import ResetReason
from presence.model import Change

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Twilio gives up on a webhook after 15 s; the buckets reach that far.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)

UNKNOWN = "unknown"

CHANGE_REASONS = ("connected", "disconnected", "expired")

PUSH_OUTCOMES = (
    "delivered",
    "http_error",
    "gone",
    "timeout",
    "connect",
    "tls",
    "dns",
    "address_refused",
)

_BOUNDS = (*LATENCY_BUCKETS, math.inf)
"""The histogram's upper bounds, +Inf included, as prometheus_client keeps its buckets."""


class _WebhookTally:
    """The webhooks counted during one event-loop iteration, not yet added to their series."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.seconds = 0.0
        self.buckets = [0] * len(_BOUNDS)
        self.outcomes: dict[tuple[str, str], int] = {}
        self.changes: dict[str, int] = {}
        self.flaps = 0


# The *_created series double the output and tell a scraper nothing it needs here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric the service exports. Label values come from closed sets (event types the
    reference lists, outcomes, reasons), never from request data, so no client can make the
    number of series grow."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            # Values live in the shared files; registering them too would report them twice.
            into: CollectorRegistry | None = None
        else:
            ProcessCollector(registry=self.registry)
            into = self.registry

        self._webhook_metrics(into)
        self._redis_metrics(into)
        self._sweeper_metrics(into)
        self._feed_metrics(into)
        self._push_metrics(into)

        # Series that exist before their first event, so that rate() and alerts see a 0.
        for reason in CHANGE_REASONS:
            self.changes.labels(reason)
        for operation in ("webhook", "query", "readiness", "sweep", "feed"):
            self.redis_errors.labels(operation)
        for reason in ResetReason:
            self.feed_resets.labels(reason)
        for operation in ("webhook", "sweep"):
            self.redis_wait_timeouts.labels(operation)

        # Children of the labelled series counted on every webhook and change, bound once:
        # labels() is a dictionary lookup under a lock, each time.
        self._webhooks: dict[tuple[str, str], Any] = {}
        self._changes = {reason: self.changes.labels(reason) for reason in CHANGE_REASONS}
        self._tally = _WebhookTally()
        self._tally_due = False

    def _webhook_metrics(self, into: CollectorRegistry | None) -> None:
        """Webhooks, and the presence changes they and the sweeper publish."""
        self.webhooks = Counter(
            "presence_webhooks",
            "Webhooks received, by EventType and outcome (applied, duplicate, stale, ignored, "
            "rejected).",
            ["event_type", "outcome"],
            registry=into,
        )
        self.webhooks_rejected = Counter(
            "presence_webhooks_rejected",
            "Webhooks answered with an error, by reason (the error code of the reply).",
            ["reason"],
            registry=into,
        )
        self.webhook_duration = Histogram(
            "presence_webhook_duration_seconds",
            "Time from a webhook's arrival to its reply.",
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.webhooks_in_flight = Gauge(
            "presence_webhooks_in_flight",
            "Webhooks being handled right now.",
            registry=into,
            multiprocess_mode="livesum",
        )
        self.changes = Counter(
            "presence_changes_published",
            "Presence changes published, by reason (connected, disconnected, expired).",
            ["reason"],
            registry=into,
        )
        self.flaps_suppressed = Counter(
            "presence_flaps_suppressed",
            "Identities that came back within the offline grace: a going-offline never published.",
            registry=into,
        )
        self.endpoints_expired = Counter(
            "presence_endpoints_expired",
            "Endpoints dropped because no event named them for PRESENCE_ENDPOINT_TTL_SECONDS.",
            registry=into,
        )

    def _redis_metrics(self, into: CollectorRegistry | None) -> None:
        """Redis out of reach, failing over, or its replicas behind."""
        self.redis_errors = Counter(
            "presence_redis_errors",
            "Times Redis could not be reached or refused a command, by what was being done "
            "(webhook, query, readiness, sweep, feed).",
            ["operation"],
            registry=into,
        )
        self.redis_failovers = Counter(
            "presence_redis_failovers",
            "Times this process saw Redis fail over: the Sentinels named another master, or a "
            "replica of a Redis Cluster became a primary.",
            registry=into,
        )
        self.redis_wait_timeouts = Counter(
            "presence_redis_wait_timeouts",
            "Writes fewer replicas than PRESENCE_REDIS_WAIT_REPLICAS confirmed within "
            "PRESENCE_REDIS_WAIT_TIMEOUT_MS, by operation (webhook: answered 503; sweep: a "
            "page's firings, published all the same).",
            ["operation"],
            registry=into,
        )

    def _sweeper_metrics(self, into: CollectorRegistry | None) -> None:
        """The sweeper of deadlines and expiries."""
        self.sweeper_lag = Gauge(
            "presence_sweeper_lag_seconds",
            "How late the sweeper's last pass was for the most overdue deadline or expiry.",
            registry=into,
            multiprocess_mode="livemax",
        )
        self.sweeps = Counter(
            "presence_sweeper_passes",
            "Passes of the sweeper over the due deadlines and expiries.",
            registry=into,
        )

    def _feed_metrics(self, into: CollectorRegistry | None) -> None:
        """The change feed's clients."""
        self.feed_streams = Gauge(
            "presence_feed_streams_open",
            "Change-feed streams open (Server-Sent Events, and long-polls waiting).",
            registry=into,
            multiprocess_mode="livesum",
        )
        self.feed_changes_sent = Counter(
            "presence_feed_changes_sent",
            "Changes sent to change-feed clients (one per client a change reaches).",
            registry=into,
        )
        self.feed_resets = Counter(
            "presence_feed_resets",
            "Cursors that could not be resumed from, by reason (retention, lost).",
            ["reason"],
            registry=into,
        )
        self.feed_clients_dropped = Counter(
            "presence_feed_clients_dropped",
            "Change-feed streams closed because the client read too slowly.",
            registry=into,
        )

    def _push_metrics(self, into: CollectorRegistry | None) -> None:
        """Push subscriptions' deliveries and leases."""
        self.push_deliveries = Counter(
            "presence_push_deliveries",
            "Attempts to deliver a push event, by outcome (delivered: a 2xx; http_error: "
            "another status; gone: 410; timeout, connect, tls, dns, address_refused).",
            ["outcome"],
            registry=into,
        )
        self.push_lag = Gauge(
            "presence_push_lag_seconds",
            "The largest lag of the push subscriptions this process delivers: from the oldest "
            "change not yet acknowledged.",
            registry=into,
            multiprocess_mode="livemax",
        )
        self.push_subscriptions = Gauge(
            "presence_push_subscriptions",
            "Push subscriptions of every service, by state (active, failing, disabled), as "
            "this process last counted them (every process counts them all).",
            ["state"],
            registry=into,
            multiprocess_mode="livemax",
        )
        self.push_leases = Gauge(
            "presence_push_leases",
            "Push subscriptions this process delivers (holds the lease of).",
            registry=into,
            multiprocess_mode="livesum",
        )
        for outcome in PUSH_OUTCOMES:
            self.push_deliveries.labels(outcome)
        for state in ("active", "failing", "disabled"):
            self.push_subscriptions.labels(state)

    def push_delivery(self, status: int | None, error: str | None) -> None:
        """One attempt of a push event: its HTTP status, or its failure."""
        if status is None:
            outcome = error or "connect"
        elif 200 <= status < 300:
            outcome = "delivered"
        else:
            outcome = "gone" if status == 410 else "http_error"
        self.push_deliveries.labels(outcome).inc()

    # A webhook's series, and the changes', are counted in plain numbers and added to
    # prometheus_client's values once per event-loop iteration (each add takes a lock; under
    # load an iteration answers many webhooks), and before every scrape, so a scrape never
    # misses one.

    def webhook_started(self) -> None:
        """A webhook is being handled (``presence_webhooks_in_flight``)."""
        self._tally.started += 1
        if not self._tally_due:
            self._add_tally_soon()

    def webhook_finished(self, seconds: float) -> None:
        """A webhook started was answered after ``seconds`` (its duration's histogram)."""
        tally = self._tally
        tally.finished += 1
        tally.seconds += seconds
        tally.buckets[bisect_left(_BOUNDS, seconds)] += 1
        if not self._tally_due:
            self._add_tally_soon()

    def webhook(self, event_type: str, outcome: str) -> None:
        """One webhook of ``event_type`` (a listed EventType or ``unknown``) had ``outcome``."""
        outcomes = self._tally.outcomes
        outcomes[event_type, outcome] = outcomes.get((event_type, outcome), 0) + 1
        if not self._tally_due:
            self._add_tally_soon()

    def _add_tally_soon(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.add_tally)
        except RuntimeError:  # no loop running: at once
            self.add_tally()
            return
        self._tally_due = True

    def add_tally(self) -> None:
        """Adds the webhooks counted so far to their series."""
        tally, self._tally, self._tally_due = self._tally, _WebhookTally(), False
        if tally.started != tally.finished:
            self.webhooks_in_flight.inc(tally.started - tally.finished)
        if tally.finished:
            # What Histogram.observe adds, once for all: the sum, and each bucket's count.
            duration: Any = self.webhook_duration
            duration._sum.inc(tally.seconds)
            for bucket, count in enumerate(tally.buckets):
                if count:
                    duration._buckets[bucket].inc(count)
        for key, count in tally.outcomes.items():
            child = self._webhooks.get(key)
            if child is None:
                child = self._webhooks[key] = self.webhooks.labels(*key)
            child.inc(count)
        for reason, count in tally.changes.items():
            self._changes[reason].inc(count)
        if tally.flaps:
            self.flaps_suppressed.inc(tally.flaps)

    def published(self, changes: Iterable[Change]) -> None:
        """Presence changes published, by a webhook or the sweeper."""
        counted = self._tally.changes
        for change in changes:
            counted[change.reason] = counted.get(change.reason, 0) + 1
            if not self._tally_due:
                self._add_tally_soon()

    def flap_suppressed(self) -> None:
        """A webhook cancelled a pending offline."""
        self._tally.flaps += 1
        if not self._tally_due:
            self._add_tally_soon()

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation).inc()

    def failover_seen(self) -> None:
        """Redis failed over (the store says so, see ``open_store``)."""
        self.redis_failovers.inc()

    def exposition(self) -> bytes:
        """The current values in the Prometheus text format."""
        self.add_tally()
        return generate_latest(self.registry)
