"""What a run did: the tally of replies, the progress line on stderr, the closing summary."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from presence.simulate.traffic import Expectation

STATUSES = ("applied", "duplicate", "stale", "ignored")
TTY_INTERVAL = 0.2
PLAIN_INTERVAL = 5.0


@dataclass
class Tally:
    """Replies counted as they arrive."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    """200 replies, by their ``status``."""
    http_errors: Counter[str] = field(default_factory=Counter)
    """Other replies, by HTTP status code."""
    transport_errors: Counter[str] = field(default_factory=Counter)
    """Requests without an HTTP reply, by exception."""
    unexpected: int = 0
    """Webhooks that did not get the reply the generator expected: a 200 with another status,
    any other HTTP reply (a 403 included), or none at all."""
    latencies: list[float] = field(default_factory=list)
    """Seconds from sending to the reply, for every HTTP reply."""

    @property
    def errors(self) -> int:
        return sum(self.http_errors.values()) + sum(self.transport_errors.values())


def percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    url: str
    signed_for: str
    """The URL the signatures were made for (``url`` unless ``--sign-url`` said otherwise)."""
    signed: bool
    seed: int
    service_sid: str
    account_sid: str
    tally: Tally
    duration: float
    expected: Expectation

    @property
    def exit_status(self) -> int:
        """0 when every webhook was answered 200; 1 for any transport error or other reply."""
        return 0 if self.tally.errors == 0 else 1

    def as_json(self) -> dict[str, Any]:
        tally = self.tally
        ordered = sorted(tally.latencies)
        expected = self.expected
        return {
            "url": self.url,
            "signed_for": self.signed_for,
            "signed": self.signed,
            "seed": self.seed,
            "service_sid": self.service_sid,
            "account_sid": self.account_sid,
            "sent": tally.sent,
            "statuses": {name: tally.statuses[name] for name in STATUSES}
            | {name: n for name, n in sorted(tally.statuses.items()) if name not in STATUSES},
            "http_errors": dict(sorted(tally.http_errors.items())),
            "transport_errors": sum(tally.transport_errors.values()),
            "transport_error_kinds": dict(sorted(tally.transport_errors.items())),
            "duration_seconds": round(self.duration, 3),
            "rate": round(tally.sent / self.duration, 1) if self.duration > 0 else 0.0,
            "latency_ms": {
                name: round(1000 * percentile(ordered, share), 2)
                for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "expected": {
                "online": expected.online,
                "truly_online": expected.truly_online,
                "ghosts": expected.ghosts,
                "endpoints": expected.endpoints,
                "statuses": expected.outcomes,
                "faults": expected.faults,
            },
            "unexpected_statuses": tally.unexpected,
            "exit_status": self.exit_status,
        }

    def as_text(self) -> str:
        data = self.as_json()
        statuses = ", ".join(f"{name} {n}" for name, n in data["statuses"].items())
        http = ", ".join(f"{code}: {n}" for code, n in data["http_errors"].items()) or "none"
        kinds = ", ".join(f"{kind} {n}" for kind, n in data["transport_error_kinds"].items())
        latency = data["latency_ms"]
        expected = data["expected"]
        faults = expected["faults"]
        if not self.signed:
            signing = "UNSIGNED"
        elif self.signed_for == self.url:
            signing = "signed"
        else:
            signing = f"signed for {self.signed_for}"
        lines = [
            f"target      {self.url} ({signing})",
            f"service     {self.service_sid} (seed {self.seed})",
            f"sent        {data['sent']} in {data['duration_seconds']:.2f} s"
            f" = {data['rate']:.0f} webhooks/s",
            f"replies     {statuses}",
            f"http errors {http}",
            f"transport   {data['transport_errors']} errors" + (f" ({kinds})" if kinds else ""),
            f"latency ms  p50 {latency['p50']:.1f}  p90 {latency['p90']:.1f}"
            f"  p99 {latency['p99']:.1f}  max {latency['max']:.1f}",
            f"faults      {faults['duplicate']} duplicates, {faults['late']} late,"
            f" {faults['lost_disconnect']} lost disconnects",
            f"expected    online {expected['online']} (truly {expected['truly_online']},"
            f" ghosts {expected['ghosts']}), endpoints {expected['endpoints']}:"
            f" compare with GET /v1/services/{self.service_sid}/stats after the offline grace",
            f"unexpected  {data['unexpected_statuses']} webhooks did not get the expected reply",
        ]
        return "\n".join(lines)


class Progress:
    """Progress on stderr: a redrawn line on a terminal, a plain line every few seconds
    otherwise, nothing when ``stream`` is None."""

    def __init__(self, stream: TextIO | None, total: int | None, duration: float | None) -> None:
        self.stream = stream
        self.tty = stream is not None and stream.isatty()
        self.total = total
        self.duration = duration
        self.interval = TTY_INTERVAL if self.tty else PLAIN_INTERVAL
        self.started = time.monotonic()
        self._drawn = False

    def line(self, tally: Tally) -> str:
        elapsed = time.monotonic() - self.started
        rate = tally.sent / elapsed if elapsed > 0 else 0.0
        if self.total is not None:
            done = f"{tally.sent}/{self.total}"
        else:
            done = f"{tally.sent} sent, {elapsed:.0f}/{self.duration:.0f} s"
        return f"simulate: {done}  {rate:.0f}/s  errors {tally.errors}"

    def update(self, tally: Tally) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line(tally))
            self._drawn = True
        else:
            self.stream.write(self.line(tally) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def render(summary: Summary, as_json: bool) -> str:
    if as_json:
        return json.dumps(summary.as_json())
    return summary.as_text()
