"""What the service should answer: a mirror of the presence rules (contract, section 4).

``ServiceView`` follows one identity's reachability events in the order they are delivered
and tells, for each, the outcome a service that saw nothing else of this identity answers
(``applied``, ``duplicate`` or ``stale``), and whether the identity ends up online. It mirrors
``presence/store/lua/reachability.lua`` minus the passage of time (endpoint expiry), which a
simulation is far too short to reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_TOMBSTONES = 64
"""Disconnected endpoints remembered per identity before the oldest is folded into a floor
(as ``prelude.lua`` does)."""


@dataclass
class ServiceView:
    """The service's record of one identity, as far as EventIds go."""

    connected: dict[str, int] = field(default_factory=dict)
    """Connected EndpointIds, each with the EventId of the last event naming it."""
    tombstones: dict[str, int] = field(default_factory=dict)
    """Disconnected EndpointIds, with the same."""
    off: int | None = None
    """EventId of the last ``IsIdentityOnline=false`` applied, and its endpoint."""
    off_endpoint: str | None = None
    floor: int | None = None
    """Events of endpoints no longer remembered are stale at or below this EventId."""
    top: int | None = None
    top_online: bool = False

    @property
    def online(self) -> bool:
        """Online once the offline grace has passed: an endpoint, or the top event said so."""
        return bool(self.connected) or self.top_online

    def classify(self, endpoint: str, event_id: int) -> str:
        known = self.connected.get(endpoint, self.tombstones.get(endpoint))
        if known is not None:
            if known == event_id:
                return "duplicate"
            if known > event_id:
                return "stale"
        if self.off is not None:
            if event_id == self.off and endpoint == self.off_endpoint:
                return "duplicate"
            if event_id <= self.off:
                return "stale"
        if known is None and self.floor is not None and event_id <= self.floor:
            return "stale"
        return "applied"

    def receive(self, endpoint: str, event_id: int, online: bool, connected: bool) -> str:
        """The outcome of one delivered event, applying it when it applies."""
        outcome = self.classify(endpoint, event_id)
        if outcome == "applied":
            self._apply(endpoint, event_id, online, connected)
        return outcome

    def _apply(self, endpoint: str, event_id: int, online: bool, connected: bool) -> None:
        if connected:
            self.tombstones.pop(endpoint, None)
            self.connected[endpoint] = event_id
        else:
            self.connected.pop(endpoint, None)
            self.tombstones[endpoint] = event_id
            if len(self.tombstones) > MAX_TOMBSTONES:
                oldest = min(self.tombstones, key=self.tombstones.__getitem__)
                forgotten = self.tombstones.pop(oldest)
                self.floor = forgotten if self.floor is None else max(self.floor, forgotten)
        if not online:
            self.off, self.off_endpoint = event_id, endpoint
            self.connected = {ep: i for ep, i in self.connected.items() if i > event_id}
            self.tombstones = {ep: i for ep, i in self.tombstones.items() if i > event_id}
        if self.top is None or event_id > self.top:
            self.top, self.top_online = event_id, online
