"""The JSON bodies the HTTP API sends and takes, as types: the handlers build them, and the
OpenAPI document (``openapi.py``) takes their schemas from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

import orjson
from aiohttp import web
from pydantic import Field
from typing_extensions import TypedDict

from presence.activity import ActivityMinute
from presence.events import MAX_NAME_LENGTH
from presence.feed.entries import ResetReason
from presence.model import IdentityPresence, Outcome, Stats
from presence.timestamps import iso_from_ms
from presence.twilio import sid_pattern

MAX_LOOKUP = 1000
"""Names in one lookup, at most."""

ServiceSid = Annotated[str, Field(pattern=sid_pattern("IS"), examples=["IS" + "0" * 32])]
Identity = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Count = Annotated[int, Field(ge=0)]


class Error(TypedDict):
    """Every error reply; some carry more members."""

    error: Annotated[str, Field(description="a code")]
    message: str


class FieldProblem(TypedDict):
    field: str
    message: str


class InvalidPayload(Error):
    """A webhook refused field by field."""

    detail: Annotated[list[FieldProblem], Field(min_length=1)]


class IdentityReply(TypedDict):
    """One identity's presence."""

    service_sid: ServiceSid
    identity: Identity
    online: Annotated[bool, Field(description="published online, including while pending offline")]
    pending_offline: Annotated[
        bool, Field(description="gone offline, still published online for the grace period")
    ]
    endpoints: Annotated[list[str], Field(description="connected EndpointIds, sorted")]
    last_event_id: Annotated[
        int | None, Field(ge=0, description="the identity's highest EventId; null if never seen")
    ]
    changed_at: Annotated[
        str | None,
        Field(
            json_schema_extra={"format": "date-time"},
            description="when the last change was published; null before it",
        ),
    ]
    version: Annotated[
        int, Field(ge=0, description="published changes so far; 0 for an identity never seen")
    ]


class Lookup(TypedDict):
    """A lookup's request."""

    identities: Annotated[list[Identity], Field(min_length=1, max_length=MAX_LOOKUP)]


class Lookups(TypedDict):
    identities: list[IdentityReply]


class ListedIdentity(TypedDict):
    """An identity of the listing with ``versions=true``: a later change of it is applied
    only when its version is higher."""

    identity: Identity
    version: Annotated[int, Field(ge=1)]


class OnlinePage(TypedDict):
    identities: Annotated[
        list[Identity] | list[ListedIdentity],
        Field(description="names; with versions=true, {identity, version} objects"),
    ]
    next_cursor: Annotated[
        str | None, Field(description="the cursor of the next page; null after the last")
    ]
    feed_cursor: Annotated[
        str,
        Field(
            description="where the change feed stood before the listing's first page, the "
            "same on every page: the listing plus the changes after it is the current state"
        ),
    ]


class ChangeMessage(TypedDict):
    """A presence change, as published on pub/sub and kept on the change feed."""

    service_sid: ServiceSid
    identity: Identity
    online: bool
    reason: Literal["connected", "disconnected", "expired"]
    event_id: Annotated[int | None, Field(ge=0, description="null for `expired`")]
    version: Annotated[int, Field(ge=1, description="the identity's changes so far")]
    changed_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ChangesPage(TypedDict):
    """A page of the change feed."""

    changes: Annotated[
        list[ChangeMessage],
        Field(description="in the feed's order: each identity's in version order"),
    ]
    cursor: Annotated[str, Field(description="resume with since=<cursor>")]
    reset: Annotated[
        bool,
        Field(
            description="true: `since` cannot be resumed from (older than the retention, or "
            "from data Redis lost); re-read the listing and follow on from its feed_cursor"
        ),
    ]
    reason: NotRequired[ResetReason]


class FeedFilter(TypedDict):
    """The identities a change-feed request follows, when a query string is too short."""

    identities: Annotated[list[Identity], Field(min_length=1, max_length=MAX_LOOKUP)]


class StatsReply(TypedDict):
    online: Annotated[Count, Field(description="identities online, pending offline included")]
    pending_offline: Annotated[Count, Field(description="identities pending offline")]
    endpoints: Annotated[Count, Field(description="connected endpoints")]


class ActivityReply(TypedDict):
    minutes: Annotated[
        list[ActivityMinute], Field(description="the last hour, a minute each, oldest first")
    ]


class WebhookOutcome(TypedDict):
    status: Outcome


class Alive(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    status: Literal["ready"]


# -- push subscriptions -------------------------------------------------------------------


class NewSubscription(TypedDict):
    """A push subscription to create."""

    url: Annotated[str, Field(max_length=2048, description="http:// or https://")]
    description: NotRequired[Annotated[str | None, Field(max_length=200)]]
    since: NotRequired[
        Annotated[
            str,
            Field(
                description="a feed cursor (a listing's feed_cursor, so nothing is missed); "
                "default: the feed's present"
            ),
        ]
    ]


class SubscriptionChange(TypedDict, total=False):
    """What a PATCH of a push subscription may change."""

    url: Annotated[str, Field(max_length=2048)]
    description: Annotated[str | None, Field(max_length=200)]


class Rotation(TypedDict, total=False):
    previous_expires_in: Annotated[
        int,
        Field(
            ge=0,
            le=86400,
            description="seconds the old secret still signs (default 86400; 0: revoked now)",
        ),
    ]


class SubscriptionObject(TypedDict):
    """A push subscription, as every reply but the 201 shows it."""

    id: str
    service_sid: ServiceSid
    url: Annotated[str, Field(description="without userinfo or query")]
    description: str | None
    state: Literal["active", "failing", "disabled"]
    created_at: str
    lag_seconds: Annotated[
        float,
        Field(
            ge=0,
            description="Redis' time minus the feed time of the first change after the "
            "committed cursor (0 when none)",
        ),
    ]
    last_success_at: str | None
    last_failure_at: str | None
    last_failure: Annotated[
        int | str | None,
        Field(description="an HTTP status, or timeout, connect, tls, dns, address_refused"),
    ]
    consecutive_failures: Count


class SubscriptionWithSecret(SubscriptionObject):
    """On creation (the URL as given) and on rotation: the only replies with the secret."""

    secret: Annotated[str, Field(pattern=r"^whsec_[A-Za-z0-9+/=]+$")]


class SubscriptionList(TypedDict):
    subscriptions: Annotated[list[SubscriptionObject], Field(description="oldest first")]


class AttemptObject(TypedDict):
    at: str
    webhook_id: str
    status: int | None
    error: str | None
    duration_ms: Count


class AttemptList(TypedDict):
    attempts: Annotated[list[AttemptObject], Field(description="the last 50, newest first")]


class PingOutcome(TypedDict):
    """What became of a ``presence.ping`` sent now."""

    webhook_id: str
    status: int | None
    error: str | None
    duration_ms: Count


def json_reply(body: Any, status: int = 200) -> web.Response:
    """``body`` as a JSON reply (orjson: the encoding is on the path of every request)."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def identity_reply(presence: IdentityPresence) -> IdentityReply:
    # Unpacked at once rather than read field by field: a lookup makes a thousand.
    service_sid, identity, online, pending, endpoints, top, changed_at, version = presence
    return {
        "service_sid": service_sid,
        "identity": identity,
        "online": online,
        "pending_offline": pending,
        "endpoints": list(endpoints),
        "last_event_id": top,
        "changed_at": None if changed_at is None else iso_from_ms(changed_at),
        "version": version,
    }


def stats_reply(stats: Stats) -> StatsReply:
    return {
        "online": stats.online,
        "pending_offline": stats.pending_offline,
        "endpoints": stats.endpoints,
    }
