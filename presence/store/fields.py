"""The fields of an identity's hash: the names the rules give them (``presence/rules.py``,
``state.lua``), and the short names they are stored under, in one table.

Stored names are short because every identity carries them; the Lua scripts receive this
table as ``FIELD`` (see ``scripts.py``), so no name is spelled twice."""

from __future__ import annotations

from presence.store.base import IdentityPresence

FIELD = {
    "version": "v",
    "published_online": "on",
    "changed_at": "ca",
    "deadline": "dl",
    "deadline_event": "de",
    "top": "top",
    "top_online": "ton",
    "top_at": "tat",
    "off_floor": "off",
    "off_endpoint": "oe",
    "forgotten_floor": "tf",
}
"""Rule name -> stored field of the identity's hash."""

CONNECTED = "e:"
"""Prefix of a connected endpoint's field (``e:<EndpointId>``: ``<EventId>:<ms>``)."""
TOMBSTONE = "t:"
"""Prefix of a disconnected endpoint's field, remembered as a tombstone."""


def lua_header() -> str:
    """This table as Lua, for the scripts that read and write the identity's hash."""
    pairs = ", ".join(f"{name} = '{stored}'" for name, stored in FIELD.items())
    return (
        "-- generated from presence/store/fields.py\n"
        f"local FIELD = {{ {pairs} }}\n"
        f"local CONNECTED, TOMBSTONE = '{CONNECTED}', '{TOMBSTONE}'\n"
    )


def presence_of(service_sid: str, identity: str, stored: dict[str, str]) -> IdentityPresence:
    """What a query answers, from the identity's stored hash (empty: never seen)."""
    online = stored.get(FIELD["published_online"]) == "1"
    top, changed_at = stored.get(FIELD["top"]), stored.get(FIELD["changed_at"])
    return IdentityPresence(
        service_sid=service_sid,
        identity=identity,
        online=online,
        pending_offline=online and FIELD["deadline"] in stored,
        endpoints=tuple(
            sorted(name[len(CONNECTED) :] for name in stored if name.startswith(CONNECTED))
        ),
        last_event_id=None if top is None else int(top),
        changed_at_ms=None if changed_at is None else int(changed_at),
        version=int(stored.get(FIELD["version"], 0)),
    )
