"""The JSON bodies the HTTP API sends and takes, as types: the handlers build them, and the
OpenAPI document (``openapi.py``) takes their schemas from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from typing_extensions import TypedDict

from presence.events import MAX_NAME_LENGTH
from presence.store.base import IdentityPresence, Outcome, Stats
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


class OnlinePage(TypedDict):
    identities: list[str]
    next_cursor: Annotated[
        str | None, Field(description="the cursor of the next page; null after the last")
    ]


class StatsReply(TypedDict):
    online: Annotated[Count, Field(description="identities online, pending offline included")]
    pending_offline: Annotated[Count, Field(description="identities pending offline")]
    endpoints: Annotated[Count, Field(description="connected endpoints")]


class WebhookOutcome(TypedDict):
    status: Outcome


class Alive(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    status: Literal["ready"]


def identity_reply(presence: IdentityPresence) -> IdentityReply:
    changed_at = presence.changed_at_ms
    return {
        "service_sid": presence.service_sid,
        "identity": presence.identity,
        "online": presence.online,
        "pending_offline": presence.pending_offline,
        "endpoints": list(presence.endpoints),
        "last_event_id": presence.last_event_id,
        "changed_at": None if changed_at is None else iso_from_ms(changed_at),
        "version": presence.version,
    }


def stats_reply(stats: Stats) -> StatsReply:
    return {
        "online": stats.online,
        "pending_offline": stats.pending_offline,
        "endpoints": stats.endpoints,
    }
