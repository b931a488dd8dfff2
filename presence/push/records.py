"""What a push subscription is (``Subscription``), as Redis keeps it (a hash of text fields)
and as the API shows it; and one attempt to deliver to it (``Attempt``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from presence.timestamps import iso_from_ms

MAX_SUBSCRIPTIONS = 100
"""Push subscriptions one service may have."""
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 200
KEPT_ATTEMPTS = 50


class SubscriptionState(StrEnum):
    ACTIVE = "active"
    FAILING = "failing"
    """The last attempt failed (``consecutive_failures`` >= 1); back to active on a 2xx."""
    DISABLED = "disabled"


class Failure(StrEnum):
    """Why an attempt failed, when it got no HTTP status."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    """Refused, reset, or closed without an answer."""
    TLS = "tls"
    DNS = "dns"
    ADDRESS_REFUSED = "address_refused"
    """The URL resolves to an address push may not call (PRESENCE_PUSH_ALLOW_PRIVATE)."""


@dataclass(frozen=True)
class PendingReset:
    """A ``presence.reset`` decided and not yet acknowledged: every attempt of it, on any
    replica, sends the same event."""

    webhook_id: str
    reason: str
    at_ms: int


def public_url(url: str) -> str:
    """The URL as shown after creation: without userinfo or query (either may hold a
    secret), nor fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Subscription:
    id: str
    service_sid: str
    url: str
    description: str | None
    enabled: bool
    created_at_ms: int
    secret: str
    cursor: str
    """The committed cursor: every change up to it is acknowledged."""
    previous_secret: str | None = None
    previous_expires_at_ms: int = 0
    consecutive_failures: int = 0
    last_success_at_ms: int | None = None
    last_failure_at_ms: int | None = None
    last_failure: str | None = None
    """An HTTP status, or a ``Failure``."""
    pending_reset: PendingReset | None = None

    @property
    def state(self) -> SubscriptionState:
        if not self.enabled:
            return SubscriptionState.DISABLED
        return SubscriptionState.FAILING if self.consecutive_failures else SubscriptionState.ACTIVE

    def secrets_at(self, now_ms: int) -> list[str]:
        """The secrets that sign now: the current one, and the one it replaced until its
        overlap ends."""
        if self.previous_secret and now_ms < self.previous_expires_at_ms:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def shown(self, lag_seconds: float) -> dict[str, Any]:
        """The object of the API (never a secret; the URL without userinfo or query)."""
        return {
            "id": self.id,
            "service_sid": self.service_sid,
            "url": public_url(self.url),
            "description": self.description,
            "state": self.state.value,
            "created_at": iso_from_ms(self.created_at_ms),
            "lag_seconds": round(lag_seconds, 3),
            "last_success_at": _iso(self.last_success_at_ms),
            "last_failure_at": _iso(self.last_failure_at_ms),
            "last_failure": _failure(self.last_failure),
            "consecutive_failures": self.consecutive_failures,
        }

    # -- as Redis keeps it ------------------------------------------------------------------

    def fields(self) -> dict[str, str]:
        """Every field, as text (the hash of ``presence.store.push``)."""
        reset = self.pending_reset
        return {
            "service_sid": self.service_sid,
            "url": self.url,
            "description": "" if self.description is None else self.description,
            "has_description": "1" if self.description is not None else "0",
            "enabled": "1" if self.enabled else "0",
            "created_at": str(self.created_at_ms),
            "secret": self.secret,
            "cursor": self.cursor,
            "previous_secret": self.previous_secret or "",
            "previous_expires_at": str(self.previous_expires_at_ms),
            **status_fields(
                self.cursor,
                self.consecutive_failures,
                self.last_success_at_ms,
                self.last_failure_at_ms,
                self.last_failure,
                reset,
            ),
        }

    @classmethod
    def from_fields(cls, subscription_id: str, fields: dict[str, str]) -> Subscription:
        def number(name: str) -> int | None:
            return int(fields[name]) if fields.get(name) else None

        reset = None
        if fields.get("reset_id"):
            reset = PendingReset(
                fields["reset_id"], fields["reset_reason"], int(fields["reset_at"])
            )
        return cls(
            id=subscription_id,
            service_sid=fields["service_sid"],
            url=fields["url"],
            description=fields["description"] if fields.get("has_description") == "1" else None,
            enabled=fields["enabled"] == "1",
            created_at_ms=int(fields["created_at"]),
            secret=fields["secret"],
            cursor=fields["cursor"],
            previous_secret=fields.get("previous_secret") or None,
            previous_expires_at_ms=number("previous_expires_at") or 0,
            consecutive_failures=number("failures") or 0,
            last_success_at_ms=number("last_success_at"),
            last_failure_at_ms=number("last_failure_at"),
            last_failure=fields.get("last_failure") or None,
            pending_reset=reset,
        )


def status_fields(
    cursor: str,
    failures: int,
    last_success_at_ms: int | None,
    last_failure_at_ms: int | None,
    last_failure: str | None,
    reset: PendingReset | None,
) -> dict[str, str]:
    """The fields the holder of a subscription's lease writes (``push_commit.lua``)."""
    return {
        "cursor": cursor,
        "failures": str(failures),
        "last_success_at": "" if last_success_at_ms is None else str(last_success_at_ms),
        "last_failure_at": "" if last_failure_at_ms is None else str(last_failure_at_ms),
        "last_failure": last_failure or "",
        "reset_id": reset.webhook_id if reset else "",
        "reset_reason": reset.reason if reset else "",
        "reset_at": str(reset.at_ms) if reset else "",
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_from_ms(ms)


def _failure(failure: str | None) -> int | str | None:
    """An HTTP status as a number, a failure as its name."""
    if failure is None:
        return None
    return int(failure) if failure.isdigit() else failure


@dataclass(frozen=True)
class Attempt:
    """One request to a subscription's URL: when, of which event, and what came of it."""

    at_ms: int
    webhook_id: str
    status: int | None
    error: str | None
    duration_ms: int

    def to_json(self) -> str:
        return json.dumps(
            [self.at_ms, self.webhook_id, self.status, self.error, self.duration_ms],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Attempt:
        at_ms, webhook_id, status, error, duration_ms = json.loads(text)
        return cls(at_ms, webhook_id, status, error, duration_ms)

    def shown(self) -> dict[str, Any]:
        return {
            "at": iso_from_ms(self.at_ms),
            "webhook_id": self.webhook_id,
            "status": self.status,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }
