"""A client of ``presence``: who is online in a Twilio Sync service, kept exactly in step.

    async with PresenceView("http://presence:8080", sid, token=token) as view:
        async for change in view.changes():
            print(change.identity, "online" if change.online else "offline")

See ``PresenceView``, and docs/clients.md in the service's repository.
"""

from presence_client.model import (
    Change,
    Identity,
    PresenceError,
    PresenceRefused,
    PresenceUnavailable,
)
from presence_client.sse import EventParser, ServerSentEvent
from presence_client.view import PresenceView

__all__ = [
    "Change",
    "EventParser",
    "Identity",
    "PresenceError",
    "PresenceRefused",
    "PresenceUnavailable",
    "PresenceView",
    "ServerSentEvent",
]
