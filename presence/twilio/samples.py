"""Sample Sync webhooks, as Twilio sends them: every parameter a form value (text).

The simulator, the OpenAPI document's examples, the tests and the benchmarks build their
webhooks here, so that a parameter Twilio adds or renames changes in one place."""

from __future__ import annotations

import json

from presence.twilio import REACHABILITY_EVENT_TYPES

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "IS" + "fedcba9876543210" * 2
DOCUMENT_SID = "ET" + "1" * 32
LIST_SID = "ES" + "2" * 32
MAP_SID = "MP" + "3" * 32

DOCUMENT_DATA = {"theme": "dark", "size": [1, 2]}
ITEM_DATA = {"text": "milk"}


def reachability(
    identity: str,
    endpoint: str,
    event_id: int,
    online: bool,
    *,
    connected: bool,
    service_sid: str = SERVICE_SID,
    account_sid: str = ACCOUNT_SID,
) -> dict[str, str]:
    """An ``endpoint_connected`` (``connected``) or ``endpoint_disconnected`` webhook;
    ``online`` is its ``IsIdentityOnline``."""
    return {
        "AccountSid": account_sid,
        "ServiceSid": service_sid,
        "EventType": REACHABILITY_EVENT_TYPES[0] if connected else REACHABILITY_EVENT_TYPES[1],
        "Identity": identity,
        "EndpointId": endpoint,
        "EventId": str(event_id),
        "IsIdentityOnline": "true" if online else "false",
    }


def collection_event(
    event_type: str,
    *,
    identity: str = "alice",
    endpoint: str | None = "EP-alice-1",
    event_id: int = 11,
    service_sid: str = SERVICE_SID,
    account_sid: str = ACCOUNT_SID,
    **extra: str,
) -> dict[str, str]:
    """A valid document, list or map webhook of ``event_type`` (``event_id`` for an item
    event); ``extra`` parameters are added or replace the sample's."""
    params = {
        "AccountSid": account_sid,
        "ServiceSid": service_sid,
        "EventType": event_type,
        "Identity": identity,
    }
    if endpoint is not None:
        params["EndpointId"] = endpoint
    kind = event_type.split("_")[0]
    if kind == "document":
        params |= {"DocumentSid": DOCUMENT_SID, "DocumentRevision": "3"}
        params |= {"DocumentUniqueName": "settings"}
        if event_type != "document_removed":
            params["DocumentData"] = json.dumps(DOCUMENT_DATA)
    elif kind == "list":
        params |= {"ListSid": LIST_SID, "ListRevision": "7", "ListUniqueName": "todo"}
    else:
        params |= {"MapSid": MAP_SID, "MapRevision": "5", "MapUniqueName": "scores"}
    if "_item_" in event_type:
        params["EventId"] = str(event_id)
        params["ItemIndex" if kind == "list" else "ItemKey"] = "4" if kind == "list" else "k1"
        if not event_type.endswith("_removed"):
            params |= {"ItemRevision": "2", "ItemData": json.dumps(ITEM_DATA)}
    return params | extra


def sample(event_type: str, event_id: int = 11) -> dict[str, str]:
    """A valid webhook of any listed ``event_type``, about alice and her endpoint."""
    if event_type in REACHABILITY_EVENT_TYPES:
        connected = event_type == REACHABILITY_EVENT_TYPES[0]
        return reachability("alice", "EP-alice-1", event_id, connected, connected=connected)
    return collection_event(event_type, event_id=event_id)
