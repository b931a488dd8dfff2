"""What a view holds: each identity's published state and the version of the change behind it.

A change is taken only when its version is above the one held (the listing already shows the
changes made while it was read, and the feed brings them again). After a reset everything
held is replaced, the versions too: after Redis lost data, a version may be used again for
another change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class Held:
    """Identities, their versions, and which of them are online."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.online: set[str] = set()

    def take(self, identity: str, version: int, online: bool) -> bool:
        """Takes a change when it is newer than what is held; False for a repeat."""
        if version <= self.versions.get(identity, 0):
            return False
        self.versions[identity] = version
        if online:
            self.online.add(identity)
        else:
            self.online.discard(identity)
        return True

    def replace(
        self, versions: Mapping[str, int], online: Iterable[str]
    ) -> list[tuple[str, bool, int]]:
        """Holds a new snapshot instead, forgetting everything held before; returns each
        identity whose state it changes: (identity, online now, version now)."""
        now_online = set(online)
        moved = [
            (name, True, versions.get(name, 0)) for name in sorted(now_online - self.online)
        ] + [(name, False, versions.get(name, 0)) for name in sorted(self.online - now_online)]
        self.versions = dict(versions)
        self.online = now_online
        return moved
