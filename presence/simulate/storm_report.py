"""What a reconnect storm did: its flickers, its pace and its cost, as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from presence.simulate.delivery import Delivered
from presence.simulate.flickers import FeedCount
from presence.simulate.report import STATUSES, Tally, percentile
from presence.simulate.storm import StormConfig

SENDER_LIMIT_SHARE = 0.9
"""A sender runnable this share of the storm (on a CPU, or waiting for one that others held),
while sending late, was the limit: it could not have sent sooner."""
LATE_SECONDS = 0.1
"""Lateness (p99) from which a storm counts as sent late."""
SAMPLE = 10
"""How many names of identities left offline the report lists."""


@dataclass(frozen=True)
class Identity:
    """An identity as the query API answered."""

    online: bool
    pending_offline: bool
    version: int

    @property
    def settled_online(self) -> bool:
        return self.online and not self.pending_offline


def _ms(values: list[float], *shares: tuple[str, float]) -> dict[str, float]:
    ordered = sorted(values)
    return {name: round(1000 * percentile(ordered, share), 2) for name, share in shares}


_P50, _P99, _MAX = ("p50", 0.5), ("p99", 0.99), ("max", 1.0)


@dataclass
class StormSummary:
    """A storm's outcome; ``failure`` says why it could not be run or counted in full."""

    url: str
    signed_for: str
    signed: bool
    api_url: str
    config: StormConfig
    connections: int
    online_phase: Delivered | None = None
    storm: Delivered | None = None
    feed: FeedCount | None = None
    after: dict[str, Identity] | None = None
    """Every identity as the query API answered at the end."""
    unaccounted: list[str] = field(default_factory=list)
    """Identities whose version moved by other than the changes the feed carried."""
    failure: str | None = None

    @property
    def flickered(self) -> int:
        return len(self.feed.offline) if self.feed is not None else 0

    @property
    def unexpected(self) -> int:
        return sum(phase.tally.unexpected for phase in (self.online_phase, self.storm) if phase)

    @property
    def not_online(self) -> list[str]:
        after = self.after or {}
        return [name for name, found in after.items() if not found.online]

    @property
    def pending_offline(self) -> list[str]:
        after = self.after or {}
        return [name for name, found in after.items() if found.online and found.pending_offline]

    @property
    def sender_limited(self) -> bool:
        """The sender sent late while it was running, or waiting to run, all along: then it
        set the pace, not the service (whose replies it would otherwise have waited for)."""
        storm = self.storm
        if storm is None:
            return False
        late = percentile(sorted(storm.lateness), 0.99) >= LATE_SECONDS
        return late and storm.cpu_share + (storm.cpu_wait_share or 0.0) >= SENDER_LIMIT_SHARE

    @property
    def exit_status(self) -> int:
        """0 when the storm ran, nothing flickered and all is as expected; 1 otherwise."""
        feed = self.feed
        clean = (
            self.failure is None
            and self.storm is not None
            and feed is not None
            and not feed.offline
            and not feed.resets
            and self.unexpected == 0
            and not self.not_online
            and not self.pending_offline
            and not self.unaccounted
        )
        return 0 if clean else 1

    def as_json(self) -> dict[str, Any]:
        config = self.config
        # A phase that did not run reads as an empty one.
        online = self.online_phase or Delivered(Tally())
        storm = self.storm or Delivered(Tally())
        feed = self.feed
        tally = storm.tally
        return {
            "mode": "storm",
            "url": self.url,
            "signed_for": self.signed_for,
            "signed": self.signed,
            "api_url": self.api_url,
            "seed": config.seed,
            "service_sid": config.service,
            "account_sid": config.account,
            "identities": config.identities,
            "wave_seconds": config.wave,
            "reconnect_delay_seconds": [config.reconnect_min, config.reconnect_max],
            "connections": self.connections,
            "grace_seconds": config.grace,
            "online_phase": {
                "sent": online.tally.sent,
                "duration_seconds": round(online.duration, 3),
                "rate": _rate(online.tally.sent, online.duration),
                "unexpected_statuses": online.tally.unexpected,
            },
            "sent": tally.sent,
            "duration_seconds": round(storm.duration, 3),
            "scheduled_seconds": round(storm.scheduled, 3),
            "rate": _rate(tally.sent, storm.duration),
            "statuses": {name: tally.statuses[name] for name in STATUSES}
            | {name: n for name, n in sorted(tally.statuses.items()) if name not in STATUSES},
            "http_errors": dict(sorted(tally.http_errors.items())),
            "transport_errors": sum(tally.transport_errors.values()),
            "transport_error_kinds": dict(sorted(tally.transport_errors.items())),
            "lateness_ms": _ms(storm.lateness, _P50, _P99, _MAX),
            "latency_ms": _ms(tally.latencies, _P50, _P99, _MAX),
            "flickers": sum(feed.offline.values()) if feed else 0,
            "flickered_identities": self.flickered,
            "flickers_per_1000": round(1000 * self.flickered / config.identities, 2),
            "back_online": sum(feed.online.values()) if feed else 0,
            "feed": {
                "changes": feed.changes if feed else 0,
                "resets": list(feed.resets) if feed else [],
                "reconnects": feed.reconnects if feed else 0,
                "unaccounted": len(self.unaccounted),
            },
            "sender": {
                "cpu_seconds": round(storm.cpu_seconds, 3),
                "cpu_share": round(storm.cpu_share, 3),
                "cpu_wait_share": _round(storm.cpu_wait_share),
                "loop_lag_ms": _ms(storm.loop_lag, _P99, _MAX),
                "limited": self.sender_limited,
            },
            "checked_at_end": self.after is not None,
            "not_online": len(self.not_online),
            "pending_offline": len(self.pending_offline),
            "not_online_sample": (self.not_online + self.pending_offline)[:SAMPLE],
            "unexpected_statuses": self.unexpected,
            "failure": self.failure,
            "exit_status": self.exit_status,
        }

    def as_text(self) -> str:
        data = self.as_json()
        config = self.config
        statuses = ", ".join(f"{name} {n}" for name, n in data["statuses"].items())
        http = ", ".join(f"{code}: {n}" for code, n in data["http_errors"].items()) or "none"
        online, lateness, latency = data["online_phase"], data["lateness_ms"], data["latency_ms"]
        feed, sender = data["feed"], data["sender"]
        signing = "UNSIGNED" if not self.signed else "signed"
        if self.signed and self.signed_for != self.url:
            signing = f"signed for {self.signed_for}"
        limit = "the LIMIT" if sender["limited"] else "not the limit"
        wait = sender["cpu_wait_share"]
        waited = "" if wait is None else f", {100 * wait:.0f}% waiting for one"
        agree = (
            "versions agree for every identity"
            if not self.unaccounted
            else f"{len(self.unaccounted)} identities changed other than the feed said"
        )
        if self.after is None:
            end = "not checked"
        elif not data["not_online"] and not data["pending_offline"]:
            end = f"all {len(self.after)} identities online"
        else:
            end = (
                f"{data['not_online']} offline, {data['pending_offline']} pending offline"
                f" (e.g. {', '.join(data['not_online_sample'])})"
            )
        lines = [
            f"target      {self.url} ({signing}); queries at {self.api_url}",
            f"service     {config.service} (seed {config.seed})",
            f"storm       {config.identities} identities, wave {config.wave:g} s, reconnect"
            f" {config.reconnect_min:g}-{config.reconnect_max:g} s later,"
            f" {self.connections} connections, grace {config.grace:g} s",
            f"online      {online['sent']} connects in {online['duration_seconds']:.2f} s"
            f" = {online['rate']:.0f} webhooks/s",
            f"sent        {data['sent']} in {data['duration_seconds']:.2f} s"
            f" = {data['rate']:.0f} webhooks/s"
            f" (the last was due at {data['scheduled_seconds']:.2f} s)",
            f"late ms     p50 {lateness['p50']:.1f}  p99 {lateness['p99']:.1f}"
            f"  max {lateness['max']:.1f}",
            f"latency ms  p50 {latency['p50']:.1f}  p99 {latency['p99']:.1f}"
            f"  max {latency['max']:.1f}",
            f"replies     {statuses}",
            f"errors      http {http}; transport {data['transport_errors']}",
            f"flickers    {data['flickered_identities']} of {config.identities} identities"
            f" announced offline = {data['flickers_per_1000']:g} per 1000"
            f"; {data['back_online']} back online",
            f"feed        {feed['changes']} changes, {len(feed['resets'])} resets,"
            f" {feed['reconnects']} reconnects; {agree}",
            f"sender      CPU {sender['cpu_seconds']:.2f} s = {100 * sender['cpu_share']:.0f}%"
            f" of a core{waited}; loop lag p99 {sender['loop_lag_ms']['p99']:.1f} ms: {limit}",
            f"end         {end}",
            f"unexpected  {data['unexpected_statuses']} webhooks did not get the expected reply",
        ]
        if self.failure is not None:
            lines.append(f"FAILED      {self.failure}")
        return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _rate(sent: int, duration: float) -> float:
    return round(sent / duration, 1) if duration > 0 else 0.0
